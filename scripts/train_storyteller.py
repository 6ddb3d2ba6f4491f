"""Train "storyteller", the text service's default generation model, from nothing but this file.

The model is a tiny Llama-architecture causal language model. Everything it learns from is made here:

1. a seeded story grammar writes short stories (characters, places, objects, weather, goals, problems,
   resolutions), and pairs some of them with the request that asks for them ("Write a story about a
   fox who loses a lantern in a snowy forest.") so the model answers a chat prompt with a story;
2. a byte-level BPE tokenizer is trained on that corpus and saved as a Hugging Face fast tokenizer
   with a chat template;
3. the model is trained on the CPU, then scored on held-out stories written with another seed.

It writes short, simple stories and nothing else: it is an honest offline default, not an assistant.

    .venv/bin/python scripts/train_storyteller.py                  # the committed model, ~10 minutes
    .venv/bin/python scripts/train_storyteller.py --quick --out /tmp/storyteller   # a smoke run
"""

from __future__ import annotations

import os

# The tokenizer trainer and torch both spawn one thread per core unless told otherwise; the
# training machine has 2 cores shared with other work.
os.environ.setdefault("RAYON_NUM_THREADS", "2")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse
import collections
import json
import math
import platform
import random
import re
import time
from dataclasses import dataclass
from pathlib import Path

import tokenizers
import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "services" / "text" / "models" / "storyteller"

TRAIN_SEED = 1234
HELD_OUT_SEED = 98765      # a different seed: stories the model never saw

END_OF_TEXT = "<|endoftext|>"
PAD = "<|pad|>"
ROLE_TOKENS = {"system": "<|system|>", "user": "<|user|>", "assistant": "<|assistant|>"}
SPECIAL_TOKENS = [END_OF_TEXT, PAD, *ROLE_TOKENS.values()]

# Each message is its role token, a newline, the content and the end-of-text token; generation stops
# at that token, so the assistant's story ends where a message would.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] not in ['system', 'user', 'assistant'] -%}"
    "{{- raise_exception('roles are system, user and assistant, not ' + message['role']) -}}"
    "{%- endif -%}"
    "{{- '<|' + message['role'] + '|>\n' + message['content'] + '<|endoftext|>' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|assistant|>\n' -}}{%- endif -%}"
)


# --------------------------------------------------------------------------------------------------
# The story world: who, where, with what
# --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Pronouns:
    he: str
    him: str
    his: str


HE, SHE, IT = Pronouns("he", "him", "his"), Pronouns("she", "her", "her"), Pronouns("it", "it", "its")

NAMES = ("Fern", "Pip", "Milo", "Luna", "Rosie", "Otto", "Hazel", "Finn", "Bram", "Ivy", "Juniper", "Toby",
         "Nell", "Basil", "Clover", "Wren", "Olive", "Jasper", "Mabel", "Ruby", "Tilly", "Oscar", "Poppy",
         "Rufus", "Daisy", "Leo", "Maple", "Sam", "Willa", "Barnaby", "Iris", "Hugo", "Nora", "Felix",
         "Penny", "Arlo", "Bea", "Theo", "Lottie", "Gus")
ROBOT_NAMES = ("Bolt", "Gizmo", "Pixel", "Sprocket", "Beep", "Cog", "Zip", "Widget", "Dot", "Rivet")

# (kind, the pronouns it may take, the names it may have)
ANYONE, PERSON_HE, PERSON_SHE = (HE, SHE), (HE,), (SHE,)
KINDS = (
    ("fox", ANYONE, NAMES), ("rabbit", ANYONE, NAMES), ("bear", ANYONE, NAMES), ("owl", ANYONE, NAMES),
    ("mouse", ANYONE, NAMES), ("hedgehog", ANYONE, NAMES), ("cat", ANYONE, NAMES), ("dog", ANYONE, NAMES),
    ("duck", ANYONE, NAMES), ("badger", ANYONE, NAMES), ("turtle", ANYONE, NAMES),
    ("squirrel", ANYONE, NAMES), ("wolf", ANYONE, NAMES), ("frog", ANYONE, NAMES), ("goat", ANYONE, NAMES),
    ("penguin", ANYONE, NAMES), ("otter", ANYONE, NAMES), ("deer", ANYONE, NAMES),
    ("dragon", ANYONE, NAMES), ("elephant", ANYONE, NAMES), ("robot", (IT,), ROBOT_NAMES),
    ("girl", PERSON_SHE, NAMES), ("boy", PERSON_HE, NAMES), ("princess", PERSON_SHE, NAMES),
    ("fisherman", PERSON_HE, NAMES), ("grandmother", PERSON_SHE, NAMES),
    ("grandfather", PERSON_HE, NAMES), ("baker", ANYONE, NAMES), ("sailor", ANYONE, NAMES),
    ("knight", ANYONE, NAMES), ("wizard", ANYONE, NAMES), ("farmer", ANYONE, NAMES),
    ("painter", ANYONE, NAMES), ("pilot", ANYONE, NAMES), ("gardener", ANYONE, NAMES),
    ("musician", ANYONE, NAMES), ("explorer", ANYONE, NAMES),
)
ADJECTIVES = ("little", "brave", "curious", "shy", "clever", "kind", "young", "old", "cheerful", "sleepy",
              "quiet", "gentle", "clumsy", "busy", "friendly", "tiny", "happy", "careful")
HOBBIES = ("sing songs", "read old books", "count the stars", "collect shiny stones", "draw pictures",
           "tell funny jokes", "dance in the rain", "watch the clouds", "bake sweet buns", "whistle tunes",
           "build things", "explore new places", "play the drum", "make up stories")


@dataclass(frozen=True)
class Place:
    noun: str
    prep: str            # in / at / on: "in the snowy forest"
    climate: str         # picks fitting weather
    landmarks: tuple[str, ...]
    feature: str         # a relative clause that paints the place
    # How a request may put it ("in a harbour" or "at a harbour"); the story always says `prep`. Requests
    # that differ from the story make the model choose the preposition from the place, not copy it.
    asked_as: tuple[str, ...] = ()


PLACES = (
    Place("snowy forest", "in", "cold", ("the frozen pond", "the tallest pine tree", "a fallen log",
          "the snowy hill"), "where the pine trees stood tall and silent"),
    Place("harbour", "at", "coast", ("the long wooden pier", "the fish market", "the red lighthouse",
          "the old boathouse"), "where the boats rocked gently on the water", ("in", "at")),
    Place("sunny meadow", "in", "mild", ("the big oak tree", "the little stream", "the patch of wild flowers",
          "the old stone wall"), "where the grass grew tall and green"),
    Place("mountain village", "in", "cold", ("the village well", "the stone bridge", "the bakery",
          "the top of the hill"), "where the houses had red roofs and smoking chimneys"),
    Place("old castle", "in", "mild", ("the tall tower", "the great hall", "the castle gate",
          "the garden behind the walls"), "where the towers touched the clouds"),
    Place("busy city", "in", "city", ("the central park", "the bus stop", "the tall clock tower",
          "the corner shop"), "where the streets were full of people"),
    Place("quiet library", "in", "indoor", ("the highest shelf", "the reading room", "the big wooden desk",
          "the window seat"), "where the shelves were full of books"),
    Place("desert town", "in", "dry", ("the old well", "the market stalls", "the sand dunes",
          "the water tower"), "where the sand glowed gold in the sun"),
    Place("river valley", "in", "mild", ("the old mill", "the wooden bridge", "the river bank",
          "the willow tree"), "where a wide river wound between the hills"),
    Place("deep cave", "in", "underground", ("the underground lake", "the narrow tunnel",
          "the glowing rocks", "the cave entrance"), "where crystals sparkled on the walls"),
    Place("apple orchard", "in", "mild", ("the oldest apple tree", "the wooden gate", "the barn",
          "the pile of baskets"), "where the trees were heavy with apples"),
    Place("little island", "on", "coast", ("the sandy beach", "the rock pools", "the palm trees",
          "the top of the cliff"), "where the sea sparkled all around"),
    Place("seaside town", "in", "coast", ("the beach", "the ice cream stall", "the sea wall",
          "the harbour steps"), "where the houses were painted in bright colours"),
    Place("farm", "on", "mild", ("the red barn", "the duck pond", "the hay field", "the chicken coop"),
          "where cows and sheep grazed in the fields"),
    Place("train station", "at", "city", ("platform two", "the ticket office", "the waiting room",
          "the big clock"), "where trains came and went all day", ("at", "in")),
    Place("jungle", "in", "wet", ("the waterfall", "the tallest tree", "the muddy river", "the hanging vines"),
          "where parrots called from the trees"),
    Place("swamp", "in", "wet", ("the lily pads", "the old log", "the muddy bank", "the tall reeds"),
          "where frogs sang all night long"),
    Place("garden", "in", "mild", ("the vegetable patch", "the rose bushes", "the garden shed",
          "the little pond"), "where bees buzzed among the flowers"),
    Place("market square", "in", "city", ("the fountain", "the fruit stall", "the toy shop", "the town hall"),
          "where people sold bread, fruit and flowers"),
    Place("space station", "on", "space", ("the control room", "the big round window", "the garden module",
          "the docking bay"), "where the stars shone in every window", ("on", "in")),
    Place("bakery", "in", "indoor", ("the big oven", "the flour sacks", "the front counter", "the back door"),
          "where the ovens were always warm", ("in", "at")),
    Place("snowy mountain", "on", "cold", ("the icy path", "the mountain hut", "the summit",
          "the frozen waterfall"), "where the wind was always cold"),
    Place("little school", "at", "mild", ("the playground", "the music room", "the big tree in the yard",
          "the classroom"), "where children laughed and played", ("at", "in")),
    Place("lighthouse", "in", "coast", ("the winding stairs", "the lamp room", "the rocks below",
          "the little kitchen"), "that stood on the rocks by the sea", ("in", "at")),
)

WEATHER = {
    "cold": ("snow was falling softly", "the air was cold and still", "a bitter wind was blowing",
             "frost sparkled on the ground", "the sky was grey and heavy with snow"),
    "coast": ("the sea was calm and blue", "a strong wind blew in from the sea", "gulls cried above the waves",
              "fog rolled in over the water", "rain was falling on the grey sea"),
    "mild": ("the sun was shining", "a soft rain was falling", "the air smelled of flowers",
             "a warm breeze was blowing", "big white clouds drifted across the sky"),
    "dry": ("the sun was hot and bright", "a dusty wind was blowing", "the sky was clear and blue",
            "the sand was warm under every step"),
    "city": ("rain fell on the busy streets", "the street lamps were just coming on",
             "the sun warmed the rooftops", "a cool wind blew between the buildings"),
    "indoor": ("rain tapped on the windows", "it was warm and quiet inside",
               "sunlight came in through the windows", "a storm was blowing outside"),
    "underground": ("water dripped slowly from the ceiling", "it was dark and cool",
                    "a soft wind whistled through the tunnels"),
    "wet": ("warm rain was falling", "the air was heavy and damp", "mist hung over the water",
            "thunder rumbled far away"),
    "space": ("the stars shone brightly outside the windows", "the Earth glowed blue far below",
              "the station hummed quietly"),
}
# No "one night" or "one bright morning": they would clash with some of the weather above.
TIMES = ("One morning", "One afternoon", "One evening", "One day", "Early one morning", "That winter",
         "One summer day")
SEASONAL_TIMES = {"That winter": "cold", "One summer day": "mild"}   # only where the weather fits


@dataclass(frozen=True)
class Thing:
    noun: str
    adjectives: tuple[str, ...]
    use: str = ""        # how it helps on a journey, if it can


OBJECTS = (
    Thing("lantern", ("old", "brass", "little", "shiny"), "lit {his} lantern and followed its warm light"),
    Thing("map", ("old", "folded", "secret", "hand-drawn"), "unfolded {his} map and found a safer path"),
    Thing("compass", ("silver", "brass", "old"), "took out {his} compass and followed the needle"),
    Thing("telescope", ("brass", "old", "little"), "looked through {his} telescope and spotted the way"),
    Thing("whistle", ("silver", "wooden", "tiny"), "blew {his} whistle, and a friend came running to help"),
    Thing("umbrella", ("yellow", "green", "big", "striped"), "opened {his} umbrella and kept going"),
    Thing("key", ("golden", "silver", "tiny", "rusty")),
    Thing("kite", ("red", "blue", "paper", "bright")),
    Thing("violin", ("old", "little", "wooden")),
    Thing("scarf", ("red", "woolly", "striped", "long")),
    Thing("hat", ("blue", "big", "straw", "funny")),
    Thing("bell", ("golden", "silver", "tiny")),
    Thing("music box", ("wooden", "small", "painted")),
    Thing("letter", ("secret", "important", "long")),
    Thing("necklace", ("shell", "silver", "pretty")),
    Thing("drum", ("little", "wooden", "red")),
    Thing("ball", ("bouncy", "red", "striped")),
    Thing("book", ("old", "big", "blue")),
    Thing("paintbrush", ("fine", "old", "favourite")),
    Thing("shell", ("pink", "shiny", "spiral")),
    Thing("toy boat", ("wooden", "little", "painted")),
    Thing("crown", ("tiny", "golden", "paper")),
    Thing("ribbon", ("blue", "silk", "yellow")),
    Thing("teapot", ("china", "little", "spotted")),
)
GIVERS = ("{his} grandmother", "{his} grandfather", "an old friend", "{his} mother", "{his} father",
          "a kind traveller", "{his} best friend", "{his} teacher")


def a(phrase: str) -> str:
    """The phrase with its indefinite article: 'an owl', 'a fox'."""
    return ("an " if phrase[0].lower() in "aeiou" else "a ") + phrase


def sentence_case(text: str) -> str:
    """Capital letters where sentences start, also inside a template of two sentences."""
    return re.sub(r'(^|[.!?]"? )([a-z])', lambda m: m.group(1) + m.group(2).upper(), text)


# --------------------------------------------------------------------------------------------------
# Casting a story: the fields its templates are filled from
# --------------------------------------------------------------------------------------------------

def cast_character(rng: random.Random, prefix: str = "", avoid_name: str = "") -> dict[str, str]:
    """A character as template fields: name, kind, a_hero ('a shy owl'), he/him/his (prefixed for a friend)."""
    kind, pronoun_choices, names = rng.choice(KINDS)
    pronouns = rng.choice(pronoun_choices)
    name = rng.choice([n for n in names if n != avoid_name])
    adjective = rng.choice(ADJECTIVES) if rng.random() < 0.7 else ""
    described = f"{adjective} {kind}".strip()
    return {f"{prefix}name": name, f"{prefix}kind": kind, f"{prefix}desc": described,
            f"a_{prefix}desc": a(described), f"a_{prefix}kind": a(kind),
            f"{prefix}he": pronouns.he, f"{prefix}him": pronouns.him, f"{prefix}his": pronouns.his}


def cast_story(rng: random.Random) -> dict[str, str]:
    """Everything a story may mention, chosen once so that every sentence agrees."""
    place = rng.choice(PLACES)
    hero = cast_character(rng)
    friend = cast_character(rng, prefix="f", avoid_name=hero["name"])
    thing = rng.choice(OBJECTS)
    landmarks = rng.sample(place.landmarks, 3)
    times = [t for t in TIMES if SEASONAL_TIMES.get(t, place.climate) == place.climate]
    fields = {
        **hero, **friend, "climate": place.climate,
        "place": f"the {place.noun}", "in_place": f"{place.prep} the {place.noun}",
        "in_a_place": f"{rng.choice(place.asked_as or (place.prep,))} {a(place.noun)}",
        "feature": place.feature,
        "lm1": landmarks[0], "lm2": landmarks[1], "lm3": landmarks[2],
        "time": rng.choice(times), "weather": rng.choice(WEATHER[place.climate]),
        "hobby": rng.choice(HOBBIES),
    }
    fields["giver"] = rng.choice(GIVERS).format(**fields)
    set_object(fields, thing, rng)
    return fields


def set_object(fields: dict[str, str], thing: Thing, rng: random.Random) -> None:
    fields.update(obj=thing.noun, obj_desc=f"{rng.choice(thing.adjectives)} {thing.noun}", a_obj=a(thing.noun))
    fields.update(a_obj_desc=a(fields["obj_desc"]), use=thing.use.format(**fields))


# --------------------------------------------------------------------------------------------------
# Plots: each is a list of slots, in story order; a slot is (required, alternative templates)
# --------------------------------------------------------------------------------------------------

OPENINGS = (
    "Once upon a time, there was {a_desc} named {name} who lived {in_place}.",
    "Once upon a time, {a_desc} named {name} lived {in_place}.",
    "{name} was {a_desc} who lived {in_place}.",
    "{in_place}, there lived {a_desc} called {name}.",
    "Long ago, {a_desc} named {name} made {his} home {in_place}.",
    "There was once {a_desc} named {name}, who lived {in_place}.",
)
SETTING = (
    "{name} loved {place}, {feature}.",
    "Every day, {name} liked to {hobby} near {lm3}.",
    "{he} loved to {hobby} more than anything.",
    "It was a peaceful place, {feature}.",
)
WEATHER_LINES = ("{time}, {weather}.", "{time}, while {weather}, {name} set out from home.")
ENDINGS = (
    "That night, {name} fell asleep with a big smile.",
    "It was a day {name} would always remember.",
    "And {name} knew that it had been the best day of all.",
    "{name} walked home happy, humming a little song.",
)
FRIEND_ENDINGS = ENDINGS + ("From then on, {name} and {fname} met {in_place} every week.",)


def plot_lost(fields: dict[str, str], rng: random.Random) -> tuple[list, str]:
    helped = rng.random() < 0.5     # decided up front: "together" only where a friend came to help
    helper = (True, ("Then {a_fdesc} named {fname} came by and asked what was wrong.",
                     "Just then, {fname} the {fkind} came along and said, \"Don't worry, we will find it "
                     "together.\"",
                     "{name}'s friend {fname}, {a_fdesc}, offered to help."))
    found_together = ("Together they followed a trail of little footprints and found the {obj} near {lm3}.",
                      "{fname} spotted it first: the {obj} was lying under {lm2}.")
    found_alone = ("At last, {name} found the {obj} under {lm2}.",
                   "Suddenly, {name} saw something by {lm2}. It was {his} {obj}!",
                   "After a long search, the {obj} turned up behind {lm3}, safe and sound.")
    slots = [
        (True, OPENINGS),
        (False, ("{name} had {a_obj_desc} that {giver} had given {him}.",
                 "{he} always carried {a_obj_desc}, a gift from {giver}.",
                 "{his} most treasured thing was {a_obj_desc}.")),
        (False, WEATHER_LINES),
        (True, ("But while {he} was playing near {lm1}, {he} dropped {his} {obj} and lost it.",
                "One day, {name} looked for {his} {obj}, but it was gone.",
                "Then a gust of wind blew, and {his} {obj} disappeared.",
                "{he} put {his} {obj} down by {lm1}, and when {he} came back, it was not there.")),
        (False, ("{he} searched by {lm2} and near {lm3}, but {he} could not find it.",
                 "{name} felt very sad and sat down by {lm2}.",
                 "{name} looked high and low, but the {obj} was nowhere to be seen.")),
        *([helper] if helped else []),
        (True, found_together if helped else found_alone),
        (False, ("{name} hugged the {obj} and promised to keep it safe.",
                 "From that day on, {name} always kept {his} {obj} close.",
                 *(FRIEND_ENDINGS if helped else ENDINGS))),
    ]
    return slots, "{a_desc} who loses {a_obj}"


def plot_journey(fields: dict[str, str], rng: random.Random) -> tuple[list, str]:
    set_object(fields, rng.choice([t for t in OBJECTS if t.use]), rng)   # something that can help on the way
    slots = [
        (True, OPENINGS),
        (False, SETTING),
        (True, ("{name} wanted to reach {lm1} before dark.",
                "{name} had always dreamed of visiting {lm1}.",
                "{time}, {name} decided to go on a journey to {lm1}.")),
        (False, ("{he} packed {his} {obj_desc} and set off.", WEATHER_LINES[0])),
        (True, ("But the path was blocked by a fallen tree, and {name} did not know which way to go.",
                "But soon {weather}, and {name} could not see the way.",
                "Halfway there, {name} got lost near {lm2}.",
                "But the old bridge was broken, and {name} could not cross.")),
        (False, ("{he} felt tired and a little scared.", "{name} sat down and wondered what to do.")),
        (True, ("Then {name} remembered {his} {obj} and {use}.",
                "Then {fname} the {fkind} appeared and showed {him} another way.",
                "{name} took a deep breath, found a new path past {lm2}, and kept going.")),
        (False, ("At last, {name} reached {lm1}, and it was even more beautiful than {he} had imagined.",
                 "When {he} finally reached {lm1}, {he} watched the sun go down and smiled.",
                 *ENDINGS[:3])),
    ]
    return slots, "{a_desc} who goes on a journey to {lm1}"


@dataclass(frozen=True)
class Project:
    verb: str            # build / bake / make
    noun: str
    material: str
    problem: str
    climates: tuple[str, ...] = ()   # empty: anywhere


PROJECTS = (
    Project("build", "snowman", "snow", "the snowman's head kept rolling off", ("cold",)),
    Project("build", "sandcastle", "sand", "a wave washed half of it away", ("coast",)),
    Project("build", "treehouse", "wood", "the roof would not stay on"),
    Project("make", "kite", "paper and string", "the kite would not fly"),
    Project("bake", "cake", "flour and sugar", "the cake came out flat"),
    Project("build", "little boat", "wood", "the boat began to leak"),
    Project("build", "birdhouse", "wood and nails", "the walls kept falling down"),
    Project("make", "scarecrow", "straw", "the wind blew the scarecrow over"),
    Project("make", "paper lantern", "coloured paper", "the paper tore in two"),
    Project("make", "quilt", "old cloth", "the pieces would not fit together"),
    Project("bake", "loaf of bread", "flour", "the bread would not rise"),
)


def plot_make(fields: dict[str, str], rng: random.Random) -> tuple[list, str]:
    project = rng.choice([p for p in PROJECTS if not p.climates or fields["climate"] in p.climates])
    fields.update(project=project.noun, a_project=a(project.noun), verb=project.verb,
                  material=project.material, problem=project.problem)
    slots = [
        (True, OPENINGS),
        (False, SETTING),
        (True, ("{time}, {name} decided to {verb} {a_project}.",
                "{name} wanted to {verb} the best {project} anyone had ever seen.",
                "{name} had a plan: {he} would {verb} {a_project} for {his} friend {fname}.")),
        (False, ("{he} gathered {material} and got to work near {lm1}.",
                 "{he} worked all morning with {material}.")),
        (True, ("But {problem}.", "But no matter how hard {he} tried, {problem}.")),
        (False, ("{name} felt like giving up.", "{name} sighed and sat down by {lm2}.")),
        (True, ("Then {fname} the {fkind} came to help, and together they tried again.",
                "So {name} thought hard, tried a new way, and this time it worked.",
                "{fname}, {a_fdesc}, showed {him} a clever trick, and the {project} was finished at last.")),
        (False, ("Everyone {in_place} came to see the {project}.",
                 "The {project} was not perfect, but {name} was very proud of it.",
                 *ENDINGS)),
    ]
    return slots, "{a_desc} who wants to {verb} {a_project}"


TROUBLES = (
    ("stuck in the mud", "pulled {fhim} out with a long branch"),
    ("lost and far from home", "showed {fhim} the way home"),
    ("stuck high up near {lm1}", "helped {fhim} climb down, one step at a time"),
    ("cold and hungry", "shared {his} supper with {fhim}"),
    ("caught in a thorny bush", "carefully set {fhim} free"),
    ("crying because {fhis} hat had blown away", "ran after the hat and brought it back"),
)


def plot_help(fields: dict[str, str], rng: random.Random) -> tuple[list, str]:
    trouble, rescue = rng.choice(TROUBLES)
    fields.update(trouble=trouble.format(**fields), rescue=rescue.format(**fields))
    slots = [
        (True, OPENINGS),
        (False, SETTING + WEATHER_LINES),
        (True, ("One day, {he} heard a small voice near {lm2}.",
                "While {he} was walking past {lm2}, {he} heard someone calling for help.")),
        (True, ("It was {a_fdesc} named {fname}, who was {trouble}.",
                "There {he} found {fname} the {fkind}, {trouble}.")),
        (False, ("\"Please help me,\" said {fname}.", "{fname} looked scared and tired.")),
        (True, ("{name} did not stop to think. {he} {rescue}.", "{name} {rescue}.",
                "Being kind and brave, {name} {rescue}.")),
        (False, ("\"Thank you,\" said {fname}. \"You are a true friend.\"",
                 "{fname} was so grateful that {fhe} gave {name} a big hug.")),
        (False, ("From that day on, {name} and {fname} were the best of friends.", *FRIEND_ENDINGS)),
    ]
    return slots, "{a_desc} who helps {a_fkind}"


# (the fear, the day it must be faced, what the brave thing is, what is learned)
FEARS = (
    ("the dark", "One evening, {he} had to walk home after the sun went down",
     "looked up at the stars shining like tiny lanterns", "the dark was not so scary after all"),
    ("thunder", "One afternoon, a big storm rolled in", "counted slowly between each flash and boom",
     "thunder was only the sky making noise"),
    ("deep water", "One day, {fname} asked {him} to swim across the pond", "took one small stroke at a time",
     "the water could be fun"),
    ("high places", "One day, {he} had to climb up to {lm1}", "held on tight and did not look down",
     "{he} was braver than {he} thought"),
    ("loud noises", "One day, a band began to play right next to {him}",
     "uncovered {his} ears and listened closely", "some loud noises are really music"),
)


def plot_fear(fields: dict[str, str], rng: random.Random) -> tuple[list, str]:
    fear, challenge, brave_act, lesson = (part.format(**fields) for part in rng.choice(FEARS))
    fields.update(fear=fear, challenge=challenge, brave_act=brave_act, lesson=lesson)
    slots = [
        (True, OPENINGS),
        (True, ("{name} was afraid of {fear}.", "There was just one problem: {name} was scared of {fear}.",
                "More than anything, {name} was afraid of {fear}.")),
        (False, SETTING),
        (True, ("{challenge}.",)),
        (False, ("{name} began to tremble.", "{name} wanted to run and hide.")),
        (False, ("{fname} the {fkind} held {his} hand and said, \"I am right here with you.\"",
                 "{his} friend {fname} whispered, \"You can do it.\"")),
        (True, ("So {name} took a deep breath and {brave_act}.", "Slowly, {name} {brave_act}.")),
        (False, ("{name} learned that {lesson}.", "In the end, {name} found out that {lesson}.", *ENDINGS)),
    ]
    return slots, "{a_desc} who is afraid of {fear}"


def plot_find(fields: dict[str, str], rng: random.Random) -> tuple[list, str]:
    slots = [
        (True, OPENINGS),
        (False, SETTING + WEATHER_LINES),
        (True, ("{time}, {name} found {a_obj_desc} lying near {lm1}.",
                "While walking by {lm1}, {name} spotted {a_obj_desc} on the ground.")),
        (False, ("{he} wondered who it belonged to.", "\"Someone must be missing this,\" thought {name}.")),
        (False, ("{he} asked everyone near {lm2}, but nobody knew.", "{he} carried it carefully past {lm2}.")),
        (True, ("At last, {he} met {fname} the {fkind}, who was looking everywhere for {fhis} {obj}.",
                "Then {he} saw {a_fdesc} named {fname} searching by {lm3}. It was {fname}'s {obj}!")),
        (True, ("{name} gave the {obj} back, and {fname} smiled from ear to ear.",
                "{fname} was so happy to have {fhis} {obj} back.")),
        (False, ("To say thank you, {fname} invited {name} for tea and cake.",
                 "From that day on, {name} and {fname} were good friends.", *FRIEND_ENDINGS)),
    ]
    return slots, "{a_desc} who finds {a_obj}"


def plot_friend(fields: dict[str, str], rng: random.Random) -> tuple[list, str]:
    slots = [
        (True, OPENINGS),
        (True, ("{name} was often lonely, because {he} had no friends to play with.",
                "{name} was very shy and always played alone.")),
        (False, SETTING + WEATHER_LINES),
        (True, ("One day, {a_fdesc} named {fname} moved in near {lm1}.",
                "{time}, {name} met {a_fdesc} called {fname} by {lm1}.")),
        (False, ("{name} wanted to say hello, but {he} was too nervous.",
                 "{fname} smiled and said, \"Would you like to play with me?\"")),
        (True, ("Soon they were laughing and playing by {lm2}.",
                "They spent the whole afternoon exploring {place} together.",
                "They both loved to {hobby}, so they did it together.")),
        (False, ("{name} was not lonely anymore.", "By evening, they were the best of friends.")),
        (False, FRIEND_ENDINGS),
    ]
    return slots, "{a_desc} who makes a new friend"


PLOTS = (plot_lost, plot_journey, plot_make, plot_help, plot_fear, plot_find, plot_friend)


@dataclass
class Story:
    text: str
    fields: dict[str, str]
    about: str               # what a request for this story would ask for: "a fox who loses a lantern"


def write_story(rng: random.Random) -> Story:
    """One story of 3 to 8 sentences: the plot's required slots, then optional ones, kept in order."""
    fields = cast_story(rng)
    plot = rng.choice(PLOTS)
    slots, about = plot(fields, rng)
    required = [i for i, (needed, _) in enumerate(slots) if needed]
    optional = [i for i, (needed, _) in enumerate(slots) if not needed]
    extra = rng.randint(0, min(len(optional), 8 - len(required)))
    chosen = sorted(required + rng.sample(optional, extra))
    sentences = [sentence_case(rng.choice(slots[i][1]).format(**fields)) for i in chosen]
    return Story(" ".join(sentences), fields, about.format(**fields))


# --------------------------------------------------------------------------------------------------
# Requests: what a user would type to get that story
# --------------------------------------------------------------------------------------------------

# A request names the hero exactly as the story does ("a robot" gives "there was a robot named ...", "a shy
# robot" gives "a shy robot"): the model learns to copy the character it is asked for.
REQUESTS = (
    "Write a story about {about} {in_a_place}.",
    "Tell me a short story about {about} {in_a_place}.",
    "Write a short story about {about}.",
    "Tell me a story about {about}.",
    "Can you write a story about {about} {in_a_place}?",
    "Please tell me a bedtime story about {about}.",
    "Write a story about {a_desc} {in_a_place}.",
    "Tell me a short story about {a_desc} {in_a_place}.",
    "Tell me a short story about {a_desc} named {name}.",
    "Write a story set {in_a_place}.",
    "I would like a story about {a_desc}.",
    "Write a story about {a_desc}.",
    "Write a story about {a_desc} and {a_fkind}.",
    "Write a little story about {a_obj}.",
    "Story about {about}.",
)
SYSTEM_PROMPTS = (
    "You are a storyteller. You write short, simple stories.",
    "You write short stories for children.",
    "You are a helpful assistant that tells little stories.",
)


def chat_for(story: Story, rng: random.Random) -> list[dict[str, str]]:
    """A conversation asking for this story, with the story as the answer; a third carry a system message."""
    # Ask for the object or the friend only where the story has them.
    fitting = [r for r in REQUESTS
               if ("{a_obj}" not in r or story.fields["obj"] in story.text)
               and ("{a_fkind}" not in r or story.fields["fname"] in story.text)]
    request = rng.choice(fitting).format(about=story.about, **story.fields)
    messages = [{"role": "user", "content": sentence_case(request)},
                {"role": "assistant", "content": story.text}]
    if rng.random() < 0.3:
        messages.insert(0, {"role": "system", "content": rng.choice(SYSTEM_PROMPTS)})
    return messages


def build_corpus(seed: int, n_stories: int, n_chats: int) -> tuple[list[str], list[list[dict[str, str]]]]:
    """Plain stories, and chats each answered by a fresh story (not one of the plain ones)."""
    rng = random.Random(seed)
    stories = [write_story(rng).text for _ in range(n_stories)]
    chats = [chat_for(write_story(rng), rng) for _ in range(n_chats)]
    return stories, chats


# --------------------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------------------

def train_tokenizer(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE: any text encodes (unseen words fall back to bytes), nothing is ever unknown."""
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    bpe.train_from_iterator(texts, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, eos_token=END_OF_TEXT, pad_token=PAD,
        additional_special_tokens=list(ROLE_TOKENS.values()), model_max_length=512)
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def render(tokenizer: PreTrainedTokenizerFast, stories: list[str], chats: list[list[dict]]) -> list[str]:
    """Training documents: a plain story ends with end-of-text; a chat is rendered by its template."""
    documents = [story + END_OF_TEXT for story in stories]
    documents += [tokenizer.apply_chat_template(chat, tokenize=False) for chat in chats]
    return documents


# --------------------------------------------------------------------------------------------------
# Model and training
# --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Settings:
    n_stories: int = 14_000
    n_chats: int = 22_000
    n_held_out: int = 1_000
    vocab_size: int = 3_000
    hidden_size: int = 128
    intermediate_size: int = 384
    layers: int = 4
    # Small batches, many steps: on a CPU this tiny model costs about the same per token at batch 16 as at
    # 32, and copying names (and the character asked for) from earlier text appears only after a few
    # thousand optimizer steps; a run of 1,200 steps of 32 learned the grammar but not that.
    steps: int = 4_000
    batch_size: int = 16
    learning_rate: float = 3e-3
    warmup_steps: int = 100


QUICK = Settings(n_stories=300, n_chats=300, n_held_out=50, vocab_size=1_000, steps=8, batch_size=16)


def new_model(settings: Settings, tokenizer: PreTrainedTokenizerFast) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=settings.hidden_size,
        intermediate_size=settings.intermediate_size, num_hidden_layers=settings.layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        tie_word_embeddings=True, rope_theta=10_000.0,
        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id)
    return LlamaForCausalLM(config)


def make_batches(token_ids: list[list[int]], batch_size: int, rng: random.Random) -> list[list[list[int]]]:
    """Batches of similar length (little padding), in random order; every document starts at position 0,
    as a prompt does when the service generates."""
    order = list(range(len(token_ids)))
    rng.shuffle(order)
    pool = batch_size * 50
    batches = []
    for start in range(0, len(order), pool):
        chunk = sorted(order[start:start + pool], key=lambda i: len(token_ids[i]))
        batches += [[token_ids[i] for i in chunk[j:j + batch_size]] for j in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def collate(batch: list[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded inputs; padding is masked from attention and from the loss (-100)."""
    width = max(len(ids) for ids in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, ids in enumerate(batch):
        input_ids[row, :len(ids)] = torch.tensor(ids)
        attention_mask[row, :len(ids)] = 1
    labels = input_ids.masked_fill(attention_mask == 0, -100)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def learning_rate(step: int, settings: Settings) -> float:
    """Linear warm-up, then cosine decay to a tenth of the peak."""
    if step < settings.warmup_steps:
        return settings.learning_rate * (step + 1) / settings.warmup_steps
    progress = (step - settings.warmup_steps) / max(1, settings.steps - settings.warmup_steps)
    return settings.learning_rate * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def train(model: LlamaForCausalLM, token_ids: list[list[int]], settings: Settings, pad_id: int,
          seed: int) -> None:
    """Train for settings.steps batches (repeating the corpus if it runs out)."""
    rng = random.Random(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.learning_rate, betas=(0.9, 0.95),
                                  weight_decay=0.01)
    model.train()
    batches: list = []
    started = time.monotonic()
    for step in range(settings.steps):
        if not batches:
            batches = make_batches(token_ids, settings.batch_size, rng)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, settings)
        loss = model(**collate(batches.pop(), pad_id)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step % 200 == 0 or step == settings.steps - 1:
            print(f"step {step:5d}  loss {loss.item():.3f}  lr {learning_rate(step, settings):.2e}  "
                  f"{time.monotonic() - started:6.0f}s", flush=True)
    model.eval()


# --------------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------------

def held_out_stories(n: int, seen: set[str], seed: int = HELD_OUT_SEED) -> list[str]:
    """Stories from another seed, minus any that happen to equal a training story word for word."""
    rng = random.Random(seed)
    stories: list[str] = []
    while len(stories) < n:
        text = write_story(rng).text
        if text not in seen:
            stories.append(text)
    return stories


@torch.no_grad()
def perplexity(model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, stories: list[str]) -> dict:
    """Mean negative log-likelihood per predicted token (end-of-text included) and its exponential."""
    total_nll, total_tokens = 0.0, 0
    for start in range(0, len(stories), 32):
        batch = [tokenizer(story + END_OF_TEXT)["input_ids"] for story in stories[start:start + 32]]
        inputs = collate(batch, tokenizer.pad_token_id)
        logits = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits.float()
        targets = inputs["labels"][:, 1:]
        nll = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), targets,
                                                ignore_index=-100, reduction="sum")
        total_nll += nll.item()
        total_tokens += int((targets != -100).sum())
    loss = total_nll / total_tokens
    return {"loss": round(loss, 4), "perplexity": round(math.exp(loss), 3), "tokens": total_tokens}


def unigram_perplexity(train_ids: list[list[int]], tokenizer: PreTrainedTokenizerFast, stories: list[str]) -> float:
    """A baseline to read the model's perplexity against: token frequencies alone (add-one smoothed)."""
    counts = collections.Counter(token for ids in train_ids for token in ids)
    total, vocab = sum(counts.values()), len(tokenizer)
    nll, n = 0.0, 0
    for story in stories:
        for token in tokenizer(story + END_OF_TEXT)["input_ids"][1:]:
            nll -= math.log((counts[token] + 1) / (total + vocab))
            n += 1
    return round(math.exp(nll / n), 1)


def sample_story(model, tokenizer, request: str, do_sample: bool, seed: int = 0,
                 max_new_tokens: int = 300) -> tuple[str, int, bool]:
    """The story the model writes for a request: (text, new tokens, whether it ended with end-of-text)."""
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": request}], add_generation_prompt=True,
                                           return_tensors="pt", return_dict=True)
    torch.manual_seed(seed)
    output = model.generate(**prompt, max_new_tokens=max_new_tokens, do_sample=do_sample)
    new = output[0, prompt["input_ids"].shape[1]:]
    return (tokenizer.decode(new, skip_special_tokens=True), len(new),
            bool(new[-1] == tokenizer.eos_token_id))


# --------------------------------------------------------------------------------------------------
# Saving
# --------------------------------------------------------------------------------------------------

def save(out: Path, model, tokenizer, provenance: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    # The chat template goes into tokenizer_config.json (not a separate .jinja file): one file to read.
    tokenizer.save_pretrained(out, save_jinja_files=False)
    GenerationConfig(
        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, do_sample=True, temperature=0.7, top_p=0.9,
        max_new_tokens=300,
    ).save_pretrained(out)
    (out / "provenance.json").write_text(json.dumps(provenance, indent=2) + "\n")
    # safetensors writes its file 0600; the service image runs as another user and must read it.
    for written in out.iterdir():
        written.chmod(0o644)


def folder_bytes(out: Path) -> int:
    return sum(f.stat().st_size for f in out.iterdir() if f.is_file())


def provenance_record(args, settings: Settings, stories: list[str], chats: list, corpus_tokens: int,
                      tokenizer, parameters: int, training_seconds: float, held_out: list[str], scores: dict,
                      baseline: float) -> dict:
    """What provenance.json says: what the model is, how it was made, and how well it does."""
    return {
        "name": "storyteller",
        "what": "A tiny Llama-architecture causal language model trained from scratch on synthetic short "
                "stories that the training script generates. It writes short, simple stories only; it is "
                "not a general assistant.",
        "script": "scripts/train_storyteller.py" + (" --quick" if args.quick else ""),
        "seed": args.seed,
        "held_out_seed": HELD_OUT_SEED,
        # services/text/language_model.py quotes this one in every response's provenance.
        "heldout_perplexity": scores["perplexity"],
        "corpus": {"stories": len(stories), "chat_pairs": len(chats), "tokens": corpus_tokens},
        "tokenizer": {"type": "byte-level BPE", "vocab_size": len(tokenizer)},
        "model": {"architecture": "LlamaForCausalLM", "parameters": parameters,
                  "hidden_size": settings.hidden_size, "layers": settings.layers,
                  "intermediate_size": settings.intermediate_size, "attention_heads": 4, "kv_heads": 2,
                  "max_position_embeddings": 512, "dtype": "float32"},
        "training": {"steps": settings.steps, "batch_size": settings.batch_size, "peak_learning_rate":
                     settings.learning_rate, "seconds": training_seconds, "torch_threads": 2,
                     "machine": f"{platform.machine()}, {os.cpu_count()} vCPU"},
        "held_out": {"stories": len(held_out), **scores, "unigram_perplexity": baseline},
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "tokenizers": tokenizers.__version__},
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a tiny corpus and a few steps: checks the script")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"model folder (default {DEFAULT_OUT})")
    parser.add_argument("--seed", type=int, default=TRAIN_SEED)
    args = parser.parse_args(argv)
    settings = QUICK if args.quick else Settings()

    torch.set_num_threads(2)
    torch.manual_seed(args.seed)
    random.seed(args.seed)

    stories, chats = build_corpus(args.seed, settings.n_stories, settings.n_chats)
    tokenizer = train_tokenizer(stories + [m["content"] for chat in chats for m in chat], settings.vocab_size)
    documents = render(tokenizer, stories, chats)
    token_ids = [tokenizer(doc)["input_ids"] for doc in documents]
    corpus_tokens = sum(map(len, token_ids))
    print(f"corpus: {len(stories)} stories + {len(chats)} chats, {corpus_tokens} tokens, "
          f"vocabulary {len(tokenizer)}", flush=True)

    model = new_model(settings, tokenizer)
    parameters = sum(p.numel() for p in model.parameters())
    print(f"model: {parameters} parameters", flush=True)
    started = time.monotonic()
    train(model, token_ids, settings, tokenizer.pad_token_id, args.seed)
    training_seconds = round(time.monotonic() - started, 1)

    seen = set(stories) | {chat[-1]["content"] for chat in chats}
    held_out = held_out_stories(settings.n_held_out, seen)
    scores = perplexity(model, tokenizer, held_out)
    baseline = unigram_perplexity(token_ids, tokenizer, held_out)
    print(f"held-out: loss {scores['loss']}, perplexity {scores['perplexity']} over {scores['tokens']} tokens "
          f"(unigram baseline {baseline}, vocabulary {len(tokenizer)})", flush=True)

    provenance = provenance_record(args, settings, stories, chats, corpus_tokens, tokenizer, parameters,
                                   training_seconds, held_out, scores, baseline)
    save(args.out, model, tokenizer, provenance)
    for request in ("Write a story about a robot in a harbour.", "Tell me a short story about a fox."):
        # A quick run's model is untrained babble: a few tokens show the path works.
        text, n_new, ended = sample_story(model, tokenizer, request, do_sample=False,
                                          max_new_tokens=20 if args.quick else 300)
        print(f"\n> {request}\n{text}\n[{n_new} tokens, ended with end-of-text: {ended}]", flush=True)
    print(f"\nsaved to {args.out} ({folder_bytes(args.out) / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
