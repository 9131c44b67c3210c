"""Exact answer scoring: the gold value must be stated, alone and whole."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from itl_env.scoring import AnswerScorer, normalise
from itl_env.store import Attribute
from itl_env.world import domain_vocabulary

VOCABULARY = {
    Attribute.birth_place: ["Japan", "France", "Niger", "Nigeria", "South Korea", "Korea"],
    Attribute.current_address: ["Lyon", "New York", "York", "Sao Paulo"],
    Attribute.occupation: ["nurse", "software engineer", "engineer"],
}


@pytest.fixture
def scorer() -> AnswerScorer:
    return AnswerScorer(VOCABULARY)


def test_date_exact_match(scorer):
    assert scorer.is_correct("Kyler Ellison was born on 1/2/1970.", Attribute.birth_date, "1/2/1970")


@pytest.mark.parametrize(
    "answer",
    [
        "Kyler Ellison was born on 11/2/1970.",
        "Kyler Ellison was born on 1/2/19701.",
        "Kyler Ellison was born on 1/12/1970.",
        "Kyler Ellison was born on 21/2/1970.",
        "It was 1/2/1970/5.",
        "It was 3/1/2/1970.",
    ],
)
def test_date_inside_a_longer_date_does_not_match(scorer, answer):
    assert not scorer.is_correct(answer, Attribute.birth_date, "1/2/1970")


def test_two_dates_score_zero(scorer):
    assert not scorer.is_correct("Either 1/2/1970 or 3/4/1980.", Attribute.birth_date, "1/2/1970")


def test_two_candidate_countries_score_zero(scorer):
    assert not scorer.is_correct("Kyler was born in Japan or France.", Attribute.birth_place, "Japan")


def test_gold_repeated_still_counts(scorer):
    assert scorer.is_correct("Japan. Yes, Japan.", Attribute.birth_place, "Japan")


def test_case_and_whitespace_are_normalised(scorer):
    assert scorer.is_correct("born in   SOUTH\n korea", Attribute.birth_place, "South Korea")
    assert scorer.is_correct("works as a Software   Engineer.", Attribute.occupation, "software engineer")


def test_value_inside_a_longer_word_does_not_count(scorer):
    assert not scorer.is_correct("She was born in Nigeria.", Attribute.birth_place, "Niger")
    assert not scorer.is_correct("The nursery is closed.", Attribute.occupation, "nurse")
    assert not scorer.is_correct("Japanese food.", Attribute.birth_place, "Japan")


def test_longer_candidate_containing_the_gold_is_a_different_value(scorer):
    assert not scorer.is_correct("He lives in New York.", Attribute.current_address, "York")
    assert not scorer.is_correct("He is a software engineer.", Attribute.occupation, "engineer")


def test_gold_longer_than_a_candidate_it_contains(scorer):
    assert scorer.is_correct("He lives in New York.", Attribute.current_address, "New York")
    assert scorer.is_correct("Born in South Korea.", Attribute.birth_place, "South Korea")


def test_wrong_value_scores_zero(scorer):
    assert not scorer.is_correct("Kyler was born in France.", Attribute.birth_place, "Japan")
    assert not scorer.is_correct("I don't know.", Attribute.birth_place, "Japan")
    assert not scorer.is_correct("", Attribute.birth_place, "Japan")


def test_empty_gold_never_matches(scorer):
    assert not scorer.is_correct("anything", Attribute.birth_place, "")


def test_mentions_lists_candidates(scorer):
    assert scorer.mentions("Japan, France or Nigeria", Attribute.birth_place) == {"japan", "france", "nigeria"}
    assert scorer.mentions("on 1/2/1970 or 11/2/1970", Attribute.birth_date) == {"1/2/1970", "11/2/1970"}


def test_normalise():
    assert normalise("  Sao\tPAULO \n") == "sao paulo"


def test_world_vocabulary_scores_every_fact(shared_world):
    scorer = AnswerScorer(domain_vocabulary())
    for fact in shared_world.facts("train") + shared_world.facts("unseen"):
        assert scorer.is_correct(f"The answer is {fact.value}.", fact.attribute, fact.value), fact


def reference_mentions(values: list[str], text: str) -> set[str]:
    """The specification: an alternation of the standalone values, longest first."""
    ordered = sorted({normalise(v) for v in values}, key=len, reverse=True)
    pattern = "|".join(r"(?<!\w)" + re.escape(v) + r"(?!\w)" for v in ordered)
    return set(re.findall(pattern, normalise(text)))


TRICKY = [
    "Niger",
    "Nigeria",
    "New",
    "New York",
    "York",
    "St",
    "Port",
    "St. Louis",
    "Port-au-Prince",
    "a",
    "ab",
    "abc",
    "b c",
    "c",
]


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.one_of(st.sampled_from(TRICKY), st.sampled_from([" ", ", ", "-", ".", "x", "ia", "\n"])), max_size=12)
)
def test_mentions_match_the_longest_first_alternation(pieces):
    text = "".join(pieces)
    assert AnswerScorer({Attribute.birth_place: TRICKY}).mentions(text, Attribute.birth_place) == reference_mentions(
        TRICKY, text
    )


def test_mentions_with_an_empty_vocabulary():
    assert AnswerScorer({Attribute.occupation: []}).mentions("a nurse", Attribute.occupation) == set()


def test_a_hedge_naming_a_value_absent_from_this_world_scores_zero(shared_world):
    """The candidates are each attribute's whole domain, not the values one world happens to hold."""
    from itl_env.env import ToolUseEnv
    from itl_env.world import atoms

    present = {row["birth_place"] for row in shared_world.rows}
    absent = next(country for country in atoms("countries") if country not in present)
    fact = next(f for f in shared_world.facts("train") if f.attribute is Attribute.birth_place)
    env = ToolUseEnv(shared_world)
    env.reset(options={"fact": fact})
    _, reward, terminated, _, _ = env.step(f"{fact.person} was born in {fact.value} or {absent}.")
    assert terminated and reward == 0.0
    env.reset(options={"fact": fact})
    assert env.step(f"{fact.person} was born in {fact.value}.")[1] == 1.0
