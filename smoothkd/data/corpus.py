"""Embedded, generated "grounded news" corpus so the whole pipeline runs offline with tiny models.

Every row is built from templates over a small closed vocabulary (`smoothkd.data.corpus_tables`): short
articles about company events (appointments, deals, results, openings, ...) naming people, organisations,
cities, numbers and dates, each of which a tokenizer can hold as one token (`entity_tokens`).
References only restate facts copied from their article, and every row carries its gold `facts`, so
faithfulness can later be scored by exact string matching against `lexicon.json`.

Prior traps: a few organisations always appear with the same "usual chief" in the instruction split
(articles and context-free questions), so a model can memorise that pairing. A `trap_rate` fraction of
the evaluation articles give such an organisation a different chief; a model that answers from memory
instead of its input names the memorised chief and is caught (`facts.trap` records the pairing).

Each split draws from its own RNG stream derived from the seed, so the same seed yields byte-identical
files and evaluation articles never repeat a training context.
"""

from __future__ import annotations

import hashlib
import json
import random
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from smoothkd.data.corpus_tables import (
    ANALYST_SENTENCES,
    APPOINTEE_SENTENCES,
    AWARDS,
    BACKGROUND_SENTENCES,
    CHIEF_SENTENCES,
    CHIEF_SUMMARY,
    CITIES,
    CLASSIFY_QUESTION,
    CONTEXT_QUESTIONS,
    COUNT_SLOTS,
    DAYS,
    EVENT_LABELS,
    EVENTS,
    EXTRACTION_QUESTIONS,
    FACILITIES,
    FIRST_NAMES,
    GENERAL_QUESTIONS,
    INSTRUCTION_MIX,
    LARGE_COUNTS,
    LAST_NAMES,
    MONEY_AMOUNTS,
    MONTHS,
    OPEN_QUESTIONS,
    ORGS,
    PERCENTS,
    SLOT_TYPES,
    SMALL_COUNTS,
    SUBJECT_WITH_CHIEF,
    YEARS,
)
from smoothkd.data.prompts import CNNDM_INSTRUCTION, XSUM_INSTRUCTION
from smoothkd.io import atomic_write_bytes, jsonl_text, read_json, sha256_file, write_json

GENERATOR_VERSION = 2
FILES = ("instruction.jsonl", "cnndm.jsonl", "xsum.jsonl", "lexicon.json")
MANIFEST = "manifest.json"

N_TRAP_ORGS = 4
# Trap organisations are drawn this many times more often than others in training, so their usual
# chief is seen often enough for a small model to memorise.
TRAP_ORG_WEIGHT = 3


@dataclass(frozen=True)
class World:
    """Seed-dependent fixed knowledge: trap organisations with their usual chief, and every org's HQ."""

    trap_chiefs: dict[str, str]
    hq: dict[str, str]
    people: tuple[str, ...]  # everyone except the usual chiefs, who appear only with their organisation
    plain_orgs: tuple[str, ...]
    distractor_rate: float  # chance of each optional sentence that adds same-type facts to an article


@dataclass(frozen=True)
class Article:
    text: str
    event: str
    values: dict[str, str]
    slots: frozenset[str]  # slots the article text actually uses
    source_facts: list[dict[str, str]]
    highlights: list[str]
    highlight_facts: list[dict[str, str]]
    xsum: str
    xsum_facts: list[dict[str, str]]


def _all_people() -> list[str]:
    return [f"{first} {last}" for first in FIRST_NAMES for last in LAST_NAMES]


def _world(seed: int, distractor_rate: float) -> World:
    rng = random.Random(f"{seed}-world")
    trap_orgs = rng.sample(ORGS, N_TRAP_ORGS)
    chiefs = rng.sample(_all_people(), N_TRAP_ORGS)
    trap_chiefs = dict(zip(trap_orgs, chiefs, strict=True))
    return World(
        trap_chiefs=trap_chiefs,
        hq={org: rng.choice(CITIES) for org in ORGS},
        people=tuple(p for p in _all_people() if p not in chiefs),
        plain_orgs=tuple(o for o in ORGS if o not in trap_chiefs),
        distractor_rate=distractor_rate,
    )


def _count(rng: random.Random) -> str:
    return rng.choice(SMALL_COUNTS if rng.random() < 0.5 else LARGE_COUNTS)


def _money(rng: random.Random) -> str:
    return f"{rng.choice(MONEY_AMOUNTS)} million"


def _date(rng: random.Random) -> str:
    return f"{rng.choice(DAYS)} {rng.choice(MONTHS)} {rng.choice(YEARS)}"


def _slots(template: str) -> list[str]:
    return [name for _, name, _, _ in string.Formatter().parse(template) if name]


def _facts(text: str, templates: list[str], values: dict[str, str]) -> list[dict[str, str]]:
    """Facts the templates put into `text`, deduplicated, in order of first appearance."""
    seen: list[tuple[str, str]] = []
    for template in templates:
        for name in _slots(template):
            fact = (SLOT_TYPES[name], values[name]) if name in SLOT_TYPES else None
            if fact and fact not in seen:
                seen.append(fact)
    seen.sort(key=lambda fact: text.index(fact[1]))
    return [{"type": kind, "value": value} for kind, value in seen]


def _fill(templates: list[str], values: dict[str, str]) -> list[str]:
    return [t.format(**values) for t in templates]


def _article(rng: random.Random, world: World, org: str, chief: str) -> Article:
    """One article about `org` led by `chief`, with its CNNDM-style and XSum-style references.

    Each of the two optional sentences (background: HQ city and staff count; an analyst's quote: another
    person and organisation) comes with probability `world.distractor_rate`; they add facts of a type the
    summary also states, so copying the right one gets harder.
    """
    event_name = rng.choice(EVENT_LABELS)
    event = EVENTS[event_name]
    others = [o for o in world.plain_orgs if o != org]
    org2, analyst_org = rng.sample(others, 2)
    values = {
        "org": org,
        "chief": chief,
        "org2": org2,
        "analyst_org": analyst_org,
        "analyst": rng.choice([p for p in world.people if p != chief]),
        "place": rng.choice(CITIES),
        "hq": world.hq[org],
        "date": _date(rng),
        "money": _money(rng),
        "pct": f"{rng.choice(PERCENTS)} percent",
        "facility": rng.choice(FACILITIES),
        "award": rng.choice(AWARDS),
    }
    counts: list[str] = []
    while len(counts) < len(COUNT_SLOTS):
        count = _count(rng)
        if count not in counts:
            counts.append(count)
    values.update(zip(COUNT_SLOTS, counts, strict=True))

    detail, detail_summary = rng.choice(event.details)
    chief_sentence = rng.choice(APPOINTEE_SENTENCES if event.names_chief else CHIEF_SENTENCES)
    body = [rng.choice(event.leads), detail]
    # Optional sentences make 3-5 sentence articles of about 35-90 words.
    background = rng.choice(BACKGROUND_SENTENCES) if rng.random() < world.distractor_rate else None
    if background:
        body.append(background[0])
    body.append(chief_sentence)
    if rng.random() < world.distractor_rate:
        body.append(rng.choice(ANALYST_SENTENCES))
    text = " ".join(_fill(body, values))

    # The chief is always in the references so that a trap shows up there; it rides in the subject
    # ("X, led by Y,") or gets its own third sentence.
    if event.names_chief:
        highlights = [event.core, detail_summary] + ([background[1]] if background else [])
    elif rng.random() < 0.5:
        highlights = [event.core.replace("{subject}", SUBJECT_WITH_CHIEF), detail_summary]
    else:
        highlights = [event.core.replace("{subject}", "{org}"), detail_summary, CHIEF_SUMMARY]
    xsum = rng.choice(event.xsum).replace("{subject}", SUBJECT_WITH_CHIEF)
    return Article(
        text=text,
        event=event_name,
        values=values,
        slots=frozenset(name for template in body for name in _slots(template)),
        source_facts=_facts(text, body, values),
        highlights=_fill(highlights, values),
        highlight_facts=_facts(" ".join(_fill(highlights, values)), highlights, values),
        xsum=xsum.format(**values),
        xsum_facts=_facts(xsum.format(**values), [xsum], values),
    )


def _fresh_article(rng: random.Random, world: World, org: str, chief: str, seen: set[str]) -> Article:
    """An article whose text is not in `seen` (then added to it), so no context repeats anywhere."""
    while True:
        article = _article(rng, world, org, chief)
        if article.text not in seen:
            seen.add(article.text)
            return article


def _training_org(rng: random.Random, world: World) -> tuple[str, str]:
    weights = [TRAP_ORG_WEIGHT if org in world.trap_chiefs else 1 for org in ORGS]
    org = rng.choices(ORGS, weights=weights)[0]
    chief = world.trap_chiefs.get(org) or rng.choice(world.people)
    return org, chief


def _facts_field(
    source: list[dict[str, str]], summary: list[dict[str, str]], trap: dict[str, str] | None = None
) -> dict[str, Any]:
    return {"source": source, "summary": summary, "trap": trap}


def _instruction_row(kind: str, rng: random.Random, world: World, seen: set[str]) -> dict[str, Any]:
    if kind == "knowledge":
        # Context-free questions state the world's fixed facts, including each trap org's usual chief.
        if rng.random() < 0.5:
            org = rng.choice(sorted(world.trap_chiefs))
            answer, category = world.trap_chiefs[org], "general_qa"
            question, fact_type = rng.choice(GENERAL_QUESTIONS), "person"
        else:
            org = rng.choice(ORGS)
            answer, category = world.hq[org], "open_qa"
            question, fact_type = rng.choice(OPEN_QUESTIONS), "place"
        facts = _facts_field([], [{"type": fact_type, "value": answer}])
        return {
            "instruction": question.format(org=org),
            "context": "",
            "response": answer,
            "category": category,
            "facts": facts,
        }

    article = _fresh_article(rng, world, *_training_org(rng, world), seen)
    source = article.source_facts
    if kind in ("cnndm", "xsum"):
        instruction = CNNDM_INSTRUCTION if kind == "cnndm" else XSUM_INSTRUCTION
        response = " ".join(article.highlights) if kind == "cnndm" else article.xsum
        summary = article.highlight_facts if kind == "cnndm" else article.xsum_facts
        return {
            "instruction": instruction,
            "context": article.text,
            "response": response,
            "category": "summarization",
            "facts": _facts_field(source, summary),
        }
    if kind == "closed_qa":
        candidates = [
            (q, slot)
            for q, slot in EVENTS[article.event].questions + CONTEXT_QUESTIONS
            if slot in article.slots
        ]
        question, slot = rng.choice(candidates)
        value = article.values[slot]
        if slot == "award":
            response, summary = f"the {value}", []
        else:
            response = f"{value} euros" if slot == "money" else value
            summary = [{"type": SLOT_TYPES[slot], "value": value}]
        return {
            "instruction": question.format(**article.values),
            "context": article.text,
            "response": response,
            "category": "closed_qa",
            "facts": _facts_field(source, summary),
        }
    if kind == "information_extraction":
        fact_type, question = rng.choice(EXTRACTION_QUESTIONS)
        summary = [f for f in source if f["type"] == fact_type]
        return {
            "instruction": question,
            "context": article.text,
            "response": ", ".join(f["value"] for f in summary),
            "category": "information_extraction",
            "facts": _facts_field(source, summary),
        }
    return {
        "instruction": CLASSIFY_QUESTION,
        "context": article.text,
        "response": article.event,
        "category": "classification",
        "facts": _facts_field(source, []),
    }


def _instruction_kinds(n: int, rng: random.Random) -> list[str]:
    kinds: list[str] = []
    for kind, share in INSTRUCTION_MIX:
        kinds += [kind] * round(n * share)
    rest = n - len(kinds)
    kinds += ["cnndm"] * (rest // 2) + ["xsum"] * (rest - rest // 2)
    rng.shuffle(kinds)
    return kinds


def _instruction_split(seed: int, n: int, world: World, seen: set[str]) -> list[dict[str, Any]]:
    rng = random.Random(f"{seed}-instruction")
    rows = []
    for i, kind in enumerate(_instruction_kinds(n, rng)):
        rows.append({"id": f"instr-{i:06d}", **_instruction_row(kind, rng, world, seen)})
    return rows


def _eval_split(
    kind: str, seed: int, n: int, trap_rate: float, world: World, seen: set[str]
) -> list[dict[str, Any]]:
    rng = random.Random(f"{seed}-{kind}")
    trap_rows = set(rng.sample(range(n), round(n * trap_rate)))
    trap_orgs = sorted(world.trap_chiefs)
    rows = []
    for i in range(n):
        trap = None
        if i in trap_rows:
            org = rng.choice(trap_orgs)
            article = _fresh_article(rng, world, org, rng.choice(world.people), seen)
            trap = {"org": org, "memorized": world.trap_chiefs[org], "actual": article.values["chief"]}
        else:
            article = _fresh_article(rng, world, rng.choice(world.plain_orgs), rng.choice(world.people), seen)
        if kind == "cnndm":
            row = {
                "article": article.text,
                "highlights": "\n".join(article.highlights),
                "facts": _facts_field(article.source_facts, article.highlight_facts, trap),
            }
        else:
            row = {
                "document": article.text,
                "summary": article.xsum,
                "facts": _facts_field(article.source_facts, article.xsum_facts, trap),
            }
        rows.append({"id": f"{kind}-{i:06d}", **row})
    return rows


def entity_tokens() -> list[str]:
    """Every entity and number the corpus can state, each with its leading space, for whole-entity tokens.

    In every template an entity follows a space, so a tokenizer that holds these strings as tokens turns
    copying a fact from the article into copying one token (three for a date: day, month, year). Amounts
    and percentages carry their unit ("39 million", "12 percent"): a causal model reads a token before the
    word after it, so a bare " 39" could not tell a money amount from a count or a day where it is read.
    """
    words = (*_all_people(), *ORGS, *CITIES, *MONTHS, *DAYS, *YEARS, *SMALL_COUNTS, *LARGE_COUNTS,
             *(f"{amount} million" for amount in MONEY_AMOUNTS), *(f"{pct} percent" for pct in PERCENTS))
    return sorted({f" {word}" for word in words})


def _lexicon() -> dict[str, list[str]]:
    return {"person": sorted(_all_people()), "org": sorted(ORGS), "place": sorted(CITIES)}


def generate_corpus(
    out_dir: str | Path,
    seed: int = 10,
    n_instruction: int = 3000,
    n_cnndm: int = 200,
    n_xsum: int = 200,
    trap_rate: float = 0.25,
    distractor_rate: float = 0.0,
) -> dict:
    """Write the corpus files, then `manifest.json`, into `out_dir`; return the manifest.

    `distractor_rate`: chance of each optional article sentence that adds a second fact of a type the
    summary states (see `_article`); 0 keeps one city, one count and one date per article.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # A stale manifest must not vouch for files while they are being rewritten.
    (out / MANIFEST).unlink(missing_ok=True)
    world = _world(seed, distractor_rate)
    seen: set[str] = set()
    contents = {
        "instruction.jsonl": jsonl_text(_instruction_split(seed, n_instruction, world, seen)).encode(),
        "cnndm.jsonl": jsonl_text(_eval_split("cnndm", seed, n_cnndm, trap_rate, world, seen)).encode(),
        "xsum.jsonl": jsonl_text(_eval_split("xsum", seed, n_xsum, trap_rate, world, seen)).encode(),
        "lexicon.json": (
            json.dumps(_lexicon(), indent=1, sort_keys=True, ensure_ascii=False) + "\n"
        ).encode(),
    }
    for name, data in contents.items():
        atomic_write_bytes(out / name, data)
    manifest = {
        "seed": seed,
        "trap_rate": trap_rate,
        "distractor_rate": distractor_rate,
        "counts": {"instruction": n_instruction, "cnndm": n_cnndm, "xsum": n_xsum},
        "files": {name: hashlib.sha256(data).hexdigest() for name, data in contents.items()},
        "generator_version": GENERATOR_VERSION,
    }
    write_json(out / MANIFEST, manifest)
    return manifest


def corpus_is_complete(out_dir: str | Path) -> bool:
    """True when the manifest exists and every corpus file is present with its recorded sha256."""
    out = Path(out_dir)
    try:
        files = read_json(out / MANIFEST)["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    if not isinstance(files, dict) or set(files) != set(FILES):
        return False
    return all((out / name).is_file() and sha256_file(out / name) == digest for name, digest in files.items())


def load_lexicon(out_dir: str | Path) -> dict[str, list[str]]:
    """Entity strings by type (`person`, `org`, `place`) from a generated corpus."""
    return read_json(Path(out_dir) / "lexicon.json")
