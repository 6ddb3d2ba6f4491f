"""Painted storybook scenes: a procedural illustration of every place the storyteller model tells of.

The storyteller (scripts/train_storyteller.py, PLACES) sets its stories in 24 places: a snowy forest, a harbour,
a sunny meadow, ... A photograph library cannot show them, so each is painted here with OpenCV and numpy from a
small recipe of shared painters (services/vision/painting.py): sky, hills or mountains, the place's landmarks,
foreground, soft light and paper grain. Outdoor places are painted by day, at dusk and at night; rooms, the cave
and the space station in their one light. They are illustrations of places: no characters, no objects a story
brings (a lantern, a fox), no text.

Each scene has a caption in the picture library's manner (what it shows, then other ways of saying it: plainly,
with its light, and by the storyteller's landmarks of the place) and the same credit. Paintings are deterministic (the random generator is seeded by the scene's id)
and are painted when first asked for, then kept for a while; the captions alone are needed at load.
"""

from __future__ import annotations

import functools
import hashlib
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from services.vision import painting
from services.vision.painting import (HEIGHT, LIGHTS, WIDTH, Painter, boat, clock_face, crenellations, fence,
                                      finish, flowers, glow, ground, hills, house, mountains, paint_sky, palm,
                                      pine, round_tree, smoke, stars, tower, water)

CREDIT = "painted by modalmesh (services/vision/painted_scenes.py), Apache-2.0"
OUTDOORS = ("day", "dusk", "night")
INDOORS = ("day",)


@dataclass(frozen=True)
class Place:
    slug: str                        # "snowy-forest": the scene ids are "painted:<slug>-<light>"
    shows: str                       # what the painting shows, for the caption
    phrasings: tuple[str, ...]       # other ways of asking for the place, the first two also said with the light
    recipe: Callable[[Painter], None]
    prep: str                        # as the storyteller puts it: "in the snowy forest", "at the harbour"
    landmarks: tuple[str, ...]       # the storyteller's landmarks of the place, where its scenes happen
    lights: tuple[str, ...] = OUTDOORS


@dataclass(frozen=True)
class Scene:
    scene_id: str                    # "painted:harbour-night", or "painted:quiet-library" for a one-light place
    caption: str
    phrasings: tuple[str, ...]
    place: Place
    light: str


# -- recipes: one short function per place ----------------------------------------------------------------

def snowy_forest(p: Painter) -> None:
    paint_sky(p, 0.55, clouds=2)
    mountains(p, 300, 130, (150, 160, 190), far=0.6, snow=True)
    hills(p, 330, 25, (225, 232, 245), far=0.3)
    for x in np.linspace(-20, WIDTH + 20, 16):
        pine(p, x + p.rng.uniform(-20, 20), 345, p.rng.uniform(90, 140), (45, 85, 80), snow=True)
    ground(p, 390, (235, 240, 250), (205, 215, 235), strokes=120)
    p.oval(470, 450, 190, 34, (170, 205, 230))                     # the frozen pond
    p.oval(430, 444, 70, 8, (215, 235, 250))
    for x in (60, 880, 180):
        pine(p, x, 530, p.rng.uniform(200, 260), (25, 70, 55), snow=True)
    p.fill(np.array([[600, 505], [760, 490], [765, 505], [605, 518]]), (110, 75, 50))   # a fallen log


def harbour(p: Painter) -> None:
    paint_sky(p, 0.55)
    hills(p, 290, 30, (110, 140, 120), far=0.5)
    water(p, 300, (40, 100, 150))
    p.rect(0, 330, 380, 400, (150, 140, 125))                     # the quay and the boathouse
    house(p, 60, 330, 120, 80, (140, 100, 70), (90, 60, 50), chimney=False)
    house(p, 220, 330, 90, 60, (225, 205, 160), (160, 60, 50))
    p.rect(300, 360, 760, 372, (120, 85, 55))                     # the long wooden pier
    for x in range(320, 760, 40):
        p.rect(x, 372, x + 6, 420, (95, 65, 45))
    tower(p, 820, 300, 34, 150, (220, 60, 50), (200, 40, 40))     # the red lighthouse
    p.rect(820, 230, 854, 246, (245, 245, 240))
    if p.light.lamps_lit:
        glow(p, 837, 160, 22, (255, 230, 150))                      # its lamp
    for x, size, hull in ((480, 30, (200, 70, 60)), (620, 24, (60, 90, 160)), (700, 40, (240, 210, 90))):
        boat(p, x, 440 + size, size, hull)


def sunny_meadow(p: Painter) -> None:
    paint_sky(p, 0.5, clouds=5)
    hills(p, 270, 30, (110, 150, 110), far=0.5)
    hills(p, 320, 25, (120, 180, 80), far=0.2)
    ground(p, 350, (110, 175, 70), (150, 205, 90), strokes=260)
    p.line(np.array([[0, 420], [250, 400], [520, 430], [760, 395], [WIDTH, 410]]), (180, 150, 120), 7)   # a stone wall
    p.line(np.array([[560, HEIGHT], [520, 480], [600, 420], [540, 370]]), (90, 160, 210), 18)         # the stream
    round_tree(p, 230, 420, 220, (55, 125, 45))                   # the big oak
    flowers(p, 380, 150, ((240, 80, 90), (250, 220, 60), (250, 250, 250), (170, 110, 220)))


def mountain_village(p: Painter) -> None:
    paint_sky(p, 0.5)
    mountains(p, 280, 190, (120, 130, 160), far=0.55, snow=True)
    hills(p, 350, 30, (90, 140, 80), far=0.15)
    for x in np.linspace(20, 900, 7):
        w = p.rng.uniform(70, 100)
        y = 380 + p.rng.uniform(-20, 20)
        house(p, x, y, w, w * 0.7, (230, 215, 180), (190, 50, 40))
        smoke(p, x + w * 0.72, y - w * 1.15)
    ground(p, 420, (95, 140, 75), (120, 170, 90), strokes=100)
    p.oval(480, 470, 120, 60, (140, 135, 130), 180, 360)          # the stone bridge
    p.oval(480, 472, 70, 40, (60, 90, 70), 180, 360)
    p.disc(820, 470, 26, (150, 145, 140))                        # the village well
    p.rect(800, 420, 806, 470, (100, 70, 50))
    p.rect(834, 420, 840, 470, (100, 70, 50))


def old_castle(p: Painter) -> None:
    paint_sky(p, 0.6, clouds=4)
    hills(p, 330, 40, (100, 130, 110), far=0.4)
    stone = (165, 160, 150)
    p.rect(260, 230, 700, 380, stone)                               # the walls
    crenellations(p, 260, 230, 440, stone)
    p.oval(480, 380, 45, 70, (60, 45, 35), 180, 360)                 # the castle gate
    for x, w, h in ((220, 70, 230), (420, 80, 280), (660, 70, 220), (540, 55, 190)):
        tower(p, x, 380, w, h, stone, (90, 70, 120) if h > 200 else None)
    hills(p, 400, 15, (80, 130, 70))
    p.line(np.array([[480, 382], [470, 450], [420, HEIGHT]]), (170, 150, 110), 26)   # the road to the gate


def busy_city(p: Painter) -> None:
    paint_sky(p, 0.6, clouds=3)
    x = 0.0
    while x < WIDTH:                                                 # the skyline
        w, h = p.rng.uniform(50, 110), p.rng.uniform(120, 300)
        shade = p.rng.uniform(80, 150)
        p.rect(x, 400 - h, x + w - 4, 400, p.haze((shade, shade * 0.95, shade * 1.05), 0.25))
        for wy in np.arange(400 - h + 12, 390, 22):
            for wx in np.arange(x + 8, x + w - 14, 18):
                if p.rng.random() < 0.55:
                    p.lamp(wx, wy, 8, 11)
        x += w
    tower(p, 450, 400, 60, 330, (170, 140, 110), (90, 80, 90))    # the tall clock tower
    clock_face(p, 480, 120, 20)
    p.rect(0, 400, WIDTH, HEIGHT, (90, 90, 95))                     # the street
    for x in range(0, WIDTH, 90):
        p.rect(x, 465, x + 45, 470, (230, 220, 160))
    for x in (80, 200, 760, 880):                                    # the park's trees
        round_tree(p, x, 440, 110, (60, 130, 60))
    for x in (320, 640):                                             # street lamps
        p.rect(x, 330, x + 5, 440, (50, 50, 55))
        p.lamp(x - 6, 322, 17, 10)


def _shelves(p: Painter, x0: float, x1: float, top: float, bottom: float) -> None:
    """Bookshelves: wooden boards and rows of books of many colours and heights."""
    p.rect(x0, top, x1, bottom, (110, 70, 40))
    for shelf_top in np.arange(top + 10, bottom - 40, 62):
        x = x0 + 8
        while x < x1 - 16:
            w, h = p.rng.uniform(7, 15), p.rng.uniform(36, 52)
            colour = tuple(p.rng.choice([[150, 40, 40], [40, 80, 130], [50, 110, 60], [190, 150, 60],
                                         [120, 60, 110], [200, 190, 170]]) * p.rng.uniform(0.7, 1.1))
            p.rect(x, shelf_top + 54 - h, x + w, shelf_top + 54, colour)
            x += w + 1
        p.rect(x0, shelf_top + 54, x1, shelf_top + 60, (80, 50, 30))


def quiet_library(p: Painter) -> None:
    paint_sky(p, 0.9, clouds=3)
    p.rect(0, 0, WIDTH, HEIGHT, (170, 135, 100))                  # the walls, a window left open to the sky
    p.land[60:320, 380:580] = 0
    p.rect(376, 56, 584, 64, (100, 65, 40))
    p.rect(376, 316, 584, 330, (100, 65, 40))                     # the window seat
    p.rect(476, 60, 484, 320, (100, 65, 40))
    p.rect(380, 186, 580, 192, (100, 65, 40))
    _shelves(p, 20, 350, 30, 470)
    _shelves(p, 610, 940, 30, 470)
    p.rect(0, 470, WIDTH, HEIGHT, (120, 80, 50))                   # the floor and the big wooden desk
    p.rect(300, 420, 660, 440, (130, 85, 45))
    p.rect(320, 440, 340, 520, (100, 65, 35))
    p.rect(620, 440, 640, 520, (100, 65, 35))
    glow(p, 600, 400, 30, (255, 210, 120))                          # a reading lamp


def desert_town(p: Painter) -> None:
    paint_sky(p, 0.55, clouds=1)
    for base, colour, far in ((300, (225, 175, 100), 0.4), (350, (235, 185, 105), 0.2), (420, (240, 195, 115), 0)):
        hills(p, base, 30, colour, far=far, roughness=2)            # the sand dunes
    for x, w in ((90, 110), (230, 90), (560, 120)):                  # flat-roofed houses of clay
        p.rect(x, 330, x + w, 400, (210, 160, 110))
        p.rect(x + w * 0.4, 360, x + w * 0.6, 400, (110, 70, 45))
        p.lamp(x + w * 0.12, 345, w * 0.15, 14)
    p.rect(740, 250, 840, 300, (170, 150, 120))                     # the water tower
    for x in (750, 825):
        p.line(np.array([[x, 300], [x - 10 if x < 790 else x + 10, 400]]), (90, 75, 60), 5)
    p.fill(np.array([[735, 250], [845, 250], [790, 225]]), (140, 100, 70))
    p.rect(360, 400, 520, 430, (150, 90, 60))                       # market stalls
    p.fill(np.array([[350, 400], [530, 400], [510, 375], [370, 375]]), (200, 60, 50))
    p.disc(640, 410, 22, (160, 130, 100))                            # the old well


def river_valley(p: Painter) -> None:
    paint_sky(p, 0.5, clouds=4)
    hills(p, 250, 40, (100, 130, 120), far=0.55)
    hills(p, 300, 40, (90, 150, 80), far=0.25)
    ground(p, 340, (100, 160, 70), (130, 190, 90), strokes=150)
    river = np.array([[420, 340], [520, 380], [380, 430], [600, 480], [500, HEIGHT]])
    for width, colour in ((60, (70, 120, 160)), (36, (90, 150, 200))):
        p.line(river, colour, width)
    p.rect(640, 300, 760, 390, (200, 185, 160))                     # the old mill and its wheel
    p.fill(np.array([[630, 300], [770, 300], [700, 250]]), (120, 70, 50))
    p.disc(630, 380, 40, (110, 80, 55))
    p.disc(630, 380, 28, (80, 120, 150))
    p.rect(380, 422, 640, 432, (130, 90, 55))                       # the wooden bridge
    round_tree(p, 200, 470, 220, (110, 160, 70))                   # the willow
    for x in np.linspace(120, 280, 9):
        p.line(np.array([[x, 330], [x - 5, 440]]), (100, 150, 60), 4)


def deep_cave(p: Painter) -> None:
    paint_sky(p, 0.8, clouds=2)                                     # seen through the cave entrance
    p.rect(0, 0, WIDTH, HEIGHT, (70, 60, 60))
    entrance = np.array([[620, 330], [650, 160], [740, 110], [830, 170], [860, 330]])
    opening = np.zeros(p.land.shape[:2], np.uint8)
    cv2.fillPoly(opening, [entrance.astype(np.int32)], 1)
    for _ in range(30):                                               # rock faces
        x, y = p.rng.uniform(0, WIDTH), p.rng.uniform(0, HEIGHT)
        p.oval(x, y, p.rng.uniform(30, 90), p.rng.uniform(15, 40), tuple(p.rng.uniform(45, 95, 3)))
    p.land[opening.astype(bool)] = 0
    water(p, 400, (30, 60, 90), ripples=25)                          # the underground lake
    for x, y in ((120, 200), (260, 120), (420, 260), (180, 330), (520, 150)):   # the glowing crystals
        colour = (120, 230, 255) if p.rng.random() < 0.6 else (200, 130, 255)
        p.fill(np.array([[x - 12, y + 20], [x, y - 30], [x + 12, y + 20]]), colour)
        glow(p, x, y, 26, colour)


def apple_orchard(p: Painter) -> None:
    paint_sky(p, 0.5, clouds=4)
    hills(p, 280, 30, (110, 150, 110), far=0.45)
    ground(p, 320, (110, 165, 70), (140, 190, 90), strokes=180)
    house(p, 700, 330, 150, 100, (180, 50, 40), (110, 40, 35), chimney=False)   # the barn
    for row, (base, height) in enumerate(((360, 110), (420, 160), (510, 220))):
        for x in np.arange(60 + row * 50, WIDTH, 260 - row * 30):
            round_tree(p, x, base, height, (60, 130, 50), fruit=(220, 40, 40))
    fence(p, 520, x0=0, x1=300)
    p.rect(300, 480, 360, 520, (140, 100, 60))                       # the wooden gate
    for x in (640, 680):                                              # baskets
        p.oval(x, 515, 22, 14, (170, 120, 60), 0, 180)


def little_island(p: Painter) -> None:
    paint_sky(p, 0.55, clouds=3)
    water(p, 300, (40, 120, 170))
    p.oval(480, 360, 340, 70, (230, 210, 150), 180, 360)            # the sandy beach
    p.fill(np.array([[560, 360], [610, 230], [700, 210], [780, 250], [820, 360]]), (120, 110, 100))   # the cliff
    p.fill(np.array([[600, 260], [700, 212], [780, 252], [760, 270], [620, 280]]), (90, 150, 70))
    for x in (300, 380, 460):
        palm(p, x, 345, p.rng.uniform(110, 150))
    for x in (170, 240, 830):                                         # rock pools
        p.oval(x, 400, 30, 9, (90, 90, 90))


def seaside_town(p: Painter) -> None:
    paint_sky(p, 0.45, clouds=3)
    hills(p, 250, 30, (100, 150, 100), far=0.3)
    colours = ((240, 120, 130), (250, 210, 90), (120, 190, 230), (250, 250, 240), (150, 220, 150))
    for i, x in enumerate(np.arange(0, WIDTH, 96)):
        house(p, x + 4, 330, 88, 90, colours[i % len(colours)], (130, 80, 70), chimney=i % 2 == 0)
    p.rect(0, 330, WIDTH, 360, (170, 165, 155))                      # the sea wall
    p.rect(0, 360, WIDTH, 420, (235, 215, 165))                      # the beach
    water(p, 420, (50, 130, 180), ripples=20)
    p.rect(150, 380, 200, 410, (250, 250, 250))                      # the ice cream stall
    p.fill(np.array([[140, 380], [210, 380], [175, 360]]), (240, 100, 140))
    for x, colour in ((600, (230, 60, 60)), (720, (60, 120, 220))):
        p.line(np.array([[x, 400], [x, 340]]), (200, 200, 200), 3)
        p.oval(x, 342, 40, 18, colour, 180, 360)                    # beach umbrellas


def farm(p: Painter) -> None:
    paint_sky(p, 0.5, clouds=4)
    hills(p, 290, 30, (110, 150, 100), far=0.4)
    for i, y in enumerate(range(300, 360, 15)):                     # fields in stripes
        p.rect(0, y, WIDTH, y + 15, (200, 180, 90) if i % 2 else (120, 170, 70))
    ground(p, 360, (100, 160, 70), (130, 190, 90), strokes=150)
    house(p, 560, 380, 200, 140, (190, 45, 40), (100, 40, 35), chimney=False)   # the red barn
    p.rect(640, 310, 680, 380, (240, 235, 220))
    house(p, 140, 360, 110, 80, (240, 230, 210), (120, 70, 50))    # the farmhouse
    p.oval(330, 460, 110, 28, (80, 140, 180))                        # the duck pond
    for x, y in ((820, 430), (860, 450), (780, 470), (440, 400)):   # sheep grazing
        p.oval(x, y, 22, 14, (245, 245, 240))
        p.disc(x + 20, y - 4, 7, (50, 50, 50))
    fence(p, 520)


def train_station(p: Painter) -> None:
    paint_sky(p, 0.55, clouds=3)
    hills(p, 300, 25, (110, 140, 120), far=0.5)
    p.rect(80, 200, 620, 340, (190, 120, 90))                       # the station building and its big clock
    p.fill(np.array([[60, 200], [640, 200], [350, 140]]), (90, 90, 100))
    clock_face(p, 350, 175, 20)
    for x in range(110, 600, 70):
        p.lamp(x, 240, 36, 50)
    p.rect(0, 340, WIDTH, 380, (160, 155, 150))                      # platform two
    p.rect(0, 380, WIDTH, HEIGHT, (110, 100, 90))                    # the tracks
    for y in (420, 480):
        p.rect(0, y, WIDTH, y + 5, (190, 190, 200))
    for x in range(0, WIDTH, 40):
        p.rect(x, 410, x + 14, 500, (90, 70, 55))
    for y in (420, 480):
        p.rect(0, y, WIDTH, y + 5, (190, 190, 200))
    p.rect(560, 330, 940, 410, (40, 110, 70))                        # a train at the platform
    for x in range(580, 920, 60):
        p.lamp(x, 345, 40, 26)
    for x in (600, 700, 820, 900):
        p.disc(x, 412, 14, (40, 40, 40))


def jungle(p: Painter) -> None:
    paint_sky(p, 0.45, clouds=4)
    hills(p, 260, 40, (60, 120, 80), far=0.5)
    p.fill(np.array([[600, 180], [700, 170], [720, 380], [580, 380]]), (120, 110, 100))   # the waterfall's cliff
    p.rect(630, 180, 680, 400, (200, 230, 250))
    for layer, (base, colour) in enumerate(((330, (40, 110, 50)), (400, (30, 95, 40)), (500, (20, 80, 35)))):
        for x in np.arange(-40, WIDTH, 90 - layer * 10):
            if layer < 2 and 560 < x < 720:
                continue
            round_tree(p, x + p.rng.uniform(-20, 20), base, p.rng.uniform(140, 240), colour)
    river = np.array([[0, 470], [300, 440], [620, 420], [900, 470], [WIDTH, 460]])
    p.line(river, (110, 90, 50), 30)                                  # the muddy river
    for x in np.linspace(30, WIDTH - 30, 14):                        # hanging vines
        p.line(np.array([[x, 0], [x + p.rng.uniform(-15, 15), p.rng.uniform(90, 220)]]), (40, 120, 40), 3)


def swamp(p: Painter) -> None:
    paint_sky(p, 0.5, clouds=2)
    hills(p, 290, 20, (90, 110, 90), far=0.6)
    for x in np.linspace(0, WIDTH, 12):                               # a far line of low trees in the mist
        round_tree(p, x + p.rng.uniform(-30, 30), 310, p.rng.uniform(60, 90), p.haze((60, 90, 60), 0.5))
    water(p, 310, (60, 80, 60), ripples=30)
    for x in (140, 760):                                              # dead trees
        p.line(np.array([[x, 440], [x + 10, 260], [x + 60, 200]]), (70, 60, 50), 14)
        p.line(np.array([[x + 8, 320], [x - 60, 250]]), (70, 60, 50), 8)
        p.line(np.array([[x + 30, 228], [x + 20, 180]]), (70, 60, 50), 6)
    p.fill(np.array([[300, 420], [560, 410], [570, 425], [310, 434]]), (90, 70, 50))   # the old log
    for _ in range(20):                                                # lily pads
        p.oval(p.rng.uniform(0, WIDTH), p.rng.uniform(340, 520), p.rng.uniform(14, 26), p.rng.uniform(5, 9),
               (70, 140, 60))
    for x in np.linspace(0, WIDTH, 26):                                # tall reeds at the edge
        top = p.rng.uniform(400, 460)
        p.line(np.array([[x, HEIGHT], [x + p.rng.uniform(-10, 10), top]]), (100, 120, 60), 3)
        p.oval(x, top + 8, 3, 10, (110, 80, 50))


def garden(p: Painter) -> None:
    paint_sky(p, 0.45, clouds=4)
    p.rect(0, 200, WIDTH, 250, (180, 100, 80))                       # a brick wall behind it
    ground(p, 250, (100, 165, 70), (130, 190, 90), strokes=220)
    house(p, 700, 330, 140, 100, (130, 150, 120), (90, 80, 70), chimney=False)   # the garden shed
    for y in (300, 340):                                               # the vegetable patch
        p.rect(60, y, 380, y + 24, (110, 80, 55))
        for x in range(75, 370, 30):
            p.oval(x, y + 4, 12, 8, (60, 150, 60))
    p.oval(520, 450, 90, 26, (90, 150, 190))                          # the little pond
    for x in (100, 230, 880):                                          # rose bushes
        p.disc(x, 470, 40, (50, 120, 50))
        flowers_at = p.rng.uniform(-30, 30, (8, 2))
        for dx, dy in flowers_at:
            p.disc(x + dx, 470 + dy, 6, (220, 50, 80))
    flowers(p, 380, 90, ((250, 220, 60), (250, 250, 250), (190, 120, 230)))


def market_square(p: Painter) -> None:
    paint_sky(p, 0.5, clouds=3)
    for i, x in enumerate(np.arange(-20, WIDTH, 110)):                 # houses round the square
        house(p, x, 300, 104, 120, ((230, 200, 160), (200, 170, 140), (240, 225, 200))[i % 3], (150, 70, 50))
    p.rect(360, 120, 600, 300, (210, 190, 150))                         # the town hall
    p.fill(np.array([[350, 120], [610, 120], [480, 70]]), (110, 70, 60))
    clock_face(p, 480, 160, 18)
    for x in range(380, 590, 50):
        p.lamp(x, 200, 24, 40)
    ground(p, 300, (175, 165, 150), (150, 140, 130), strokes=200)      # cobbles
    p.oval(480, 390, 90, 30, (150, 150, 160))                          # the fountain
    p.oval(480, 385, 70, 20, (120, 170, 210))
    p.rect(474, 330, 486, 385, (150, 150, 160))
    for x, stripe in ((80, (200, 60, 50)), (700, (60, 120, 200))):      # the fruit stall and the toy shop
        p.rect(x, 430, x + 180, 490, (160, 110, 70))
        for i in range(6):
            p.fill(np.array([[x + i * 30, 430], [x + i * 30 + 30, 430], [x + i * 30 + 30, 400],
                             [x + i * 30, 400]]), stripe if i % 2 else (245, 240, 230))
        for i in range(8):
            p.disc(x + 15 + i * 21, 440, 8, ((250, 150, 40), (220, 40, 40), (120, 200, 60))[i % 3])


def space_station(p: Painter) -> None:
    paint_sky(p, 1.0, clouds=0)
    p.sky[:] = np.minimum(p.sky, 40)
    stars(p)                                                   # a sky of stars, no air to blur them
    p.rect(0, 0, WIDTH, HEIGHT, (150, 160, 175))                        # the station's wall
    cv2.circle(p.land, (480, 240), 190, (0, 0, 0, 0), -1, cv2.LINE_AA)  # the big round window
    cv2.circle(p.land, (480, 240), 205, (90, 95, 110, 255), 16, cv2.LINE_AA)
    cv2.circle(p.sky, (560, 470), 170, (60, 120, 220), -1, cv2.LINE_AA)   # the Earth glowing blue below
    for _ in range(6):
        cv2.ellipse(p.sky, (int(p.rng.uniform(440, 660)), int(p.rng.uniform(330, 440))),
                    (int(p.rng.uniform(20, 45)), int(p.rng.uniform(10, 25))), 0, 0, 360, (80, 160, 80), -1)
    for x in (40, 780):                                                   # panels and lights
        p.rect(x, 80, x + 140, 420, (120, 130, 145))
        for y in range(110, 400, 50):
            p.lamp(x + 20, y, 18, 12, lit=(120, 255, 160))
            p.lamp(x + 60, y, 60, 8, lit=(255, 160, 80))
    p.rect(0, 470, WIDTH, HEIGHT, (110, 115, 125))


def bakery(p: Painter) -> None:
    paint_sky(p, 1.0, clouds=0)
    p.rect(0, 0, WIDTH, HEIGHT, (235, 215, 180))                       # warm walls
    p.rect(80, 120, 420, 420, (170, 90, 70))                           # the big brick oven
    for y in range(130, 420, 22):
        p.line(np.array([[80, y], [420, y]]), (140, 70, 55), 2)
    p.oval(250, 330, 100, 80, (40, 25, 20), 180, 360)
    glow(p, 250, 300, 60, (255, 150, 50))
    p.rect(480, 330, 920, 430, (150, 100, 60))                         # the front counter with bread
    for i, x in enumerate(range(510, 900, 55)):
        p.oval(x, 322, 24, 13, (200, 140, 70) if i % 2 else (220, 170, 90))
    p.rect(470, 60, 920, 75, (130, 85, 50))
    for i, x in enumerate(range(490, 900, 70)):
        p.oval(x, 58, 26, 14, (210, 150, 80))
    p.rect(0, 430, WIDTH, HEIGHT, (160, 120, 80))
    for x in (60, 130):                                                 # flour sacks
        p.oval(x, 470, 36, 50, (240, 235, 220))


def snowy_mountain(p: Painter) -> None:
    paint_sky(p, 0.55, clouds=3)
    mountains(p, 330, 240, (120, 130, 170), far=0.5, snow=True)
    mountains(p, 420, 200, (140, 150, 180), far=0.15, snow=True)
    ground(p, 440, (235, 240, 250), (210, 220, 240), strokes=100)
    p.line(np.array([[300, HEIGHT], [420, 470], [380, 430], [520, 380]]), (200, 215, 235), 14)   # the icy path
    house(p, 560, 400, 110, 70, (120, 80, 55), (230, 235, 245))                     # the mountain hut
    for x in (80, 160, 860):
        pine(p, x, 520, p.rng.uniform(130, 180), (40, 80, 70), snow=True)


def little_school(p: Painter) -> None:
    paint_sky(p, 0.5, clouds=4)
    hills(p, 290, 25, (110, 150, 110), far=0.4)
    p.rect(300, 200, 720, 360, (220, 180, 140))                         # the school and its bell tower
    p.fill(np.array([[280, 200], [740, 200], [510, 130]]), (160, 60, 50))
    p.rect(480, 80, 540, 150, (220, 180, 140))
    p.fill(np.array([[470, 80], [550, 80], [510, 45]]), (160, 60, 50))
    for x in range(330, 700, 70):
        p.lamp(x, 240, 40, 50)
    p.rect(490, 300, 530, 360, (100, 60, 40))
    ground(p, 360, (110, 165, 70), (140, 190, 90), strokes=120)
    p.rect(0, 420, 280, HEIGHT, (190, 170, 140))                        # the playground
    p.line(np.array([[60, 500], [100, 420], [140, 500]]), (200, 60, 60), 6)          # a swing frame
    p.line(np.array([[160, 500], [200, 420], [240, 500]]), (200, 60, 60), 6)
    p.line(np.array([[100, 420], [200, 420]]), (200, 60, 60), 6)
    round_tree(p, 830, 470, 260)                                        # the big tree in the yard
    fence(p, 400, (240, 240, 240), x0=280, x1=WIDTH)


def lighthouse(p: Painter) -> None:
    paint_sky(p, 0.55, clouds=3)
    water(p, 320, (40, 100, 150))
    p.fill(np.array([[380, HEIGHT], [430, 360], [520, 330], [640, 350], [760, 420], [820, HEIGHT]]),
           (90, 85, 80))                                                # the rocks
    for i in range(6):                                                    # the striped tower
        p.rect(530, 130 + i * 35, 590, 165 + i * 35, (230, 60, 50) if i % 2 == 0 else (245, 245, 240))
    p.rect(520, 90, 600, 130, (60, 60, 70))                               # the lamp room
    p.fill(np.array([[515, 90], [605, 90], [560, 60]]), (50, 50, 60))
    house(p, 620, 340, 70, 40, (245, 245, 240), (90, 90, 100))          # the little kitchen
    if p.light.lamps_lit:
        glow(p, 560, 110, 40, (255, 240, 170))
        beam = np.array([[560, 100], [0, 40], [0, 170]], np.int32)
        p.lamps.append(lambda out: cv2.fillPoly(out, [beam], (90, 85, 60), cv2.LINE_AA))
    else:
        p.rect(530, 96, 590, 124, (200, 220, 230))
    for _ in range(12):                                                    # foam on the rocks
        p.oval(p.rng.uniform(380, 830), p.rng.uniform(430, 530), p.rng.uniform(15, 35), 5, (235, 240, 245))


PLACES = (
    Place("snowy-forest", "tall pine trees in deep snow around a frozen pond, a fallen log and snowy hills",
          ("a snowy forest", "pine trees in the snow in winter", "a frozen pond in the woods",
           "a snowy forest where the pine trees stood tall and silent"), snowy_forest,
          "in", ("the frozen pond", "the tallest pine tree", "a fallen log", "the snowy hill")),
    Place("harbour", "boats on the water by a long wooden pier, a red lighthouse and an old boathouse",
          ("a harbour with boats", "a port with a pier and fishing boats", "a red lighthouse by the harbour",
           "a harbour where the boats rocked gently on the water"), harbour,
          "at", ("the long wooden pier", "the fish market", "the red lighthouse", "the old boathouse")),
    Place("sunny-meadow", "tall green grass, wild flowers, a big oak tree, a little stream and a stone wall",
          ("a sunny meadow", "a green field of grass and wild flowers", "a big oak tree in a meadow",
           "a sunny meadow where the grass grew tall and green"), sunny_meadow,
          "in", ("the big oak tree", "the little stream", "the patch of wild flowers", "the old stone wall")),
    Place("mountain-village", "houses with red roofs and smoking chimneys below snowy mountains, a stone bridge "
          "and a village well",
          ("a mountain village", "a village in the mountains", "red-roofed houses with chimneys",
           "a mountain village where the houses had red roofs and smoking chimneys"), mountain_village,
          "in", ("the village well", "the stone bridge", "the bakery", "the top of the hill")),
    Place("old-castle", "an old stone castle with tall towers, walls and a great gate on a hill",
          ("an old castle", "a castle with tall towers", "a medieval castle on a hill",
           "an old castle where the towers touched the clouds"), old_castle,
          "in", ("the tall tower", "the great hall", "the castle gate", "the garden behind the walls")),
    Place("busy-city", "a city skyline with tall buildings, a clock tower, a street with lamps and a park",
          ("a busy city", "a city street with tall buildings", "a town with a tall clock tower",
           "a busy city where the streets were full of people"), busy_city,
          "in", ("the central park", "the bus stop", "the tall clock tower", "the corner shop")),
    Place("quiet-library", "tall bookshelves full of books, a big wooden desk, a reading lamp and a window seat",
          ("a quiet library", "shelves full of books", "a reading room with books and a desk",
           "a quiet library where the shelves were full of books"), quiet_library,
          "in", ("the highest shelf", "the reading room", "the big wooden desk", "the window seat"), INDOORS),
    Place("desert-town", "golden sand dunes, clay houses, market stalls, an old well and a water tower",
          ("a desert town", "sand dunes in the desert", "a dusty town in the hot desert",
           "a desert town where the sand glowed gold in the sun"), desert_town,
          "in", ("the old well", "the market stalls", "the sand dunes", "the water tower")),
    Place("river-valley", "a wide river winding between green hills, an old mill with its wheel, a wooden bridge "
          "and a willow", ("a river valley", "a river between the hills", "an old mill by a river",
                           "a river valley where a wide river wound between the hills"), river_valley,
          "in", ("the old mill", "the wooden bridge", "the river bank", "the willow tree")),
    Place("deep-cave", "a dark cave with glowing crystals on the rock walls and an underground lake",
          ("a deep cave", "glowing crystals in a cave", "an underground lake in a cavern",
           "a deep cave where crystals sparkled on the walls"), deep_cave,
          "in", ("the underground lake", "the narrow tunnel", "the glowing rocks", "the cave entrance"), INDOORS),
    Place("apple-orchard", "rows of apple trees heavy with red apples, a barn, a wooden gate and baskets",
          ("an apple orchard", "apple trees full of red apples", "an orchard with fruit trees",
           "an apple orchard where the trees were heavy with apples"), apple_orchard,
          "in", ("the oldest apple tree", "the wooden gate", "the barn", "the pile of baskets")),
    Place("little-island", "a little island in the sea with a sandy beach, palm trees, rock pools and a cliff",
          ("a little island", "a tropical island with palm trees", "a sandy beach surrounded by the sea",
           "a little island where the sea sparkled all around"), little_island,
          "on", ("the sandy beach", "the rock pools", "the palm trees", "the top of the cliff")),
    Place("seaside-town", "brightly painted houses along a sea wall, a beach with umbrellas and an ice cream stall",
          ("a seaside town", "colourful houses by the sea", "a beach in a seaside town",
           "a seaside town where the houses were painted in bright colours"), seaside_town,
          "in", ("the beach", "the ice cream stall", "the sea wall", "the harbour steps")),
    Place("farm", "a red barn, a farmhouse, fields, a duck pond and sheep grazing behind a fence",
          ("a farm", "a red barn on a farm", "sheep and cows grazing in the fields",
           "a farm where cows and sheep grazed in the fields"),
          farm,
          "on", ("the red barn", "the duck pond", "the hay field", "the chicken coop")),
    Place("train-station", "a railway station with a big clock, a platform, tracks and a train",
          ("a train station", "a railway platform with a train", "trains at the station",
           "a train station where trains came and went all day"), train_station,
          "at", ("platform two", "the ticket office", "the waiting room", "the big clock")),
    Place("jungle", "a thick green jungle of tall trees and hanging vines, a waterfall and a muddy river",
          ("a jungle", "a tropical rainforest", "a waterfall in the jungle",
           "a jungle where parrots called from the trees"),
          jungle,
          "in", ("the waterfall", "the tallest tree", "the muddy river", "the hanging vines")),
    Place("swamp", "a misty swamp of dark water with lily pads, tall reeds, an old log and dead trees",
          ("a swamp", "a marsh with reeds and lily pads", "a misty bog with murky water",
           "a swamp where frogs sang all night long"), swamp,
          "in", ("the lily pads", "the old log", "the muddy bank", "the tall reeds")),
    Place("garden", "a garden with flowers, rose bushes, a vegetable patch, a little pond and a shed",
          ("a garden", "a flower garden with roses", "a vegetable patch in a back garden",
           "a garden where bees buzzed among the flowers"), garden,
          "in", ("the vegetable patch", "the rose bushes", "the garden shed", "the little pond")),
    Place("market-square", "a town square with a fountain, striped market stalls of fruit and toys, and the "
          "town hall", ("a market square", "a fountain in the town square", "a market with fruit stalls",
                        "a market square where people sold bread, fruit and flowers"), market_square,
          "in", ("the fountain", "the fruit stall", "the toy shop", "the town hall")),
    Place("space-station", "the inside of a space station: a big round window onto the stars and the blue "
          "Earth, panels of lights", ("a space station", "a spaceship window looking at the Earth",
                                      "the control room of a space station",
                                      "a space station where the stars shone in every window"),
          space_station,
          "on", ("the control room", "the big round window", "the garden module", "the docking bay"), ("night",)),
    Place("bakery", "a warm bakery with a big brick oven glowing, bread on the counter and flour sacks",
          ("a bakery", "fresh bread in a bakery", "a baker's oven", "a bakery where the ovens were always warm"),
          bakery,
          "in", ("the big oven", "the flour sacks", "the front counter", "the back door"), INDOORS),
    Place("snowy-mountain", "high snowy mountain peaks, an icy path, a mountain hut and pine trees",
          ("a snowy mountain", "the summit of a high mountain in the snow", "a mountain hut on an icy path",
           "a snowy mountain where the wind was always cold"), snowy_mountain,
          "on", ("the icy path", "the mountain hut", "the summit", "the frozen waterfall")),
    Place("little-school", "a little school with a bell tower, a playground with swings and a big tree in the yard",
          ("a little school", "a school playground", "a village schoolhouse",
           "a little school where children laughed and played"),
          little_school,
          "at", ("the playground", "the music room", "the big tree in the yard", "the classroom")),
    Place("lighthouse", "a tall striped lighthouse on the rocks by the sea, with a lamp room and a little kitchen",
          ("a lighthouse", "a lighthouse on the rocks by the sea", "the lamp of a lighthouse over the waves",
           "a lighthouse that stood on the rocks by the sea"), lighthouse,
          "in", ("the winding stairs", "the lamp room", "the rocks below", "the little kitchen")),
)

_LIGHT_NAMES = {"day": "by day", "dusk": "at dusk", "night": "at night"}


def scenes() -> tuple[Scene, ...]:
    """Every painted scene, with its caption and phrasings (nothing painted yet)."""
    return tuple(_scene(place, light) for place in PLACES for light in place.lights)


def _scene(place: Place, light: str) -> Scene:
    one_light = len(place.lights) == 1
    scene_id = f"painted:{place.slug}" + ("" if one_light else f"-{light}")
    noun = place.phrasings[0]
    when = "" if one_light else f" {LIGHTS[light].words}"
    caption = f"A storybook painting of {noun}{when}: {place.shows}"
    # The place said plainly ties every light of it (the seed picks one); said with its light, it wins for
    # a prompt that names the light. A story's scene often names a landmark rather than the place.
    lit = () if one_light else tuple(f"{text} {_LIGHT_NAMES[light]}" for text in place.phrasings[:2])
    landmarks = tuple(f"{landmark} {place.prep} the {place.slug.replace('-', ' ')}" for landmark in place.landmarks)
    return Scene(scene_id, caption, (caption, *place.phrasings, *lit, *landmarks), place, light)


def paint(scene: Scene) -> np.ndarray:
    """The scene's picture, RGB uint8 [HEIGHT, WIDTH, 3]; the same pixels on every call."""
    return _painted(scene.place.slug, scene.light)


@functools.lru_cache(maxsize=24)
def _painted(slug: str, light: str) -> np.ndarray:
    place = next(p for p in PLACES if p.slug == slug)
    painter = Painter(LIGHTS[light], np.random.default_rng(zlib.crc32(f"{slug}-{light}".encode())))
    place.recipe(painter)
    pixels = finish(painter)
    pixels.flags.writeable = False   # shared by every request that uses it
    return pixels


@functools.lru_cache(maxsize=1)
def recipes_digest() -> str:
    """A short hash of the painting code: the paintings' version, changing whenever a recipe does."""
    digest = hashlib.sha256()
    for module in (__file__, painting.__file__):
        digest.update(Path(module).read_bytes())
    return digest.hexdigest()[:12]

