"""Question and answer templates: how a fact is asked about and how it is stated.

Several question phrasings per attribute keep the models from keying on one sentence; one
answer phrasing per attribute keeps the target the model copies into unambiguous. Every
question parses back to (name, attribute), which is how the oracle policy reads questions.
"""

from __future__ import annotations

import re

from itl_env.store import Attribute

QUESTIONS: dict[Attribute, tuple[str, ...]] = {
    Attribute.birth_date: (
        "When was {name} born?",
        "What is the birth date of {name}?",
        "On what date was {name} born?",
        "What is {name}'s date of birth?",
    ),
    Attribute.birth_place: (
        "Where was {name} born?",
        "In which country was {name} born?",
        "What is the birth place of {name}?",
        "What is {name}'s country of birth?",
    ),
    Attribute.current_address: (
        "Where does {name} live?",
        "In which city does {name} live now?",
        "What is the current address of {name}?",
        "Which city is {name}'s home?",
    ),
    Attribute.occupation: (
        "What does {name} do for a living?",
        "What is {name}'s occupation?",
        "What job does {name} have?",
        "What is the profession of {name}?",
    ),
}

ANSWERS: dict[Attribute, str] = {
    Attribute.birth_date: "{name} was born on {value}.",
    Attribute.birth_place: "{name} was born in {value}.",
    Attribute.current_address: "{name} lives in {value}.",
    Attribute.occupation: "{name}'s occupation is {value}.",
}

UNKNOWN_ANSWER = "I don't know."


def question(name: str, attribute: Attribute, variant: int = 0) -> str:
    templates = QUESTIONS[attribute]
    return templates[variant % len(templates)].format(name=name)


def answer(name: str, attribute: Attribute, value: str) -> str:
    return ANSWERS[attribute].format(name=name, value=value)


def _pattern(template: str) -> re.Pattern[str]:
    head, tail = template.split("{name}")
    return re.compile(re.escape(head) + r"(?P<name>.+?)" + re.escape(tail))


_PARSERS = [(_pattern(t), attribute) for attribute, templates in QUESTIONS.items() for t in templates]


def parse_question(text: str) -> tuple[str, Attribute] | None:
    """(name, attribute) of a question written from ``QUESTIONS``, or None."""
    text = text.strip()
    for pattern, attribute in _PARSERS:
        match = pattern.fullmatch(text)
        if match:
            return match.group("name"), attribute
    return None
