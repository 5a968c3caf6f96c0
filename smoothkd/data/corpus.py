"""Embedded, generated "grounded news" corpus so the whole pipeline runs offline with tiny models.

Every row is built from templates over a small closed vocabulary: short articles about company events
(appointments, deals, results, openings, ...) naming people, organisations, cities, numbers and dates.
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
import os
import random
import string
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from smoothkd.data.prompts import CNNDM_INSTRUCTION, XSUM_INSTRUCTION

GENERATOR_VERSION = 1
FILES = ("instruction.jsonl", "cnndm.jsonl", "xsum.jsonl", "lexicon.json")
MANIFEST = "manifest.json"

# No first name is a suffix of another and no last name a prefix of another, so no full name can hide
# inside a different one; none of these words occurs in an organisation or city name either.
FIRST_NAMES = (
    "Ada", "Leo", "Mara", "Owen", "Nina", "Hugo", "Iris", "Felix", "Clara", "Omar",
    "Petra", "Victor", "Sofia", "Daniel", "Elena", "Tomas", "Greta", "Ivan", "Julia", "Marco",
    "Nora", "Paul", "Rosa", "Simon", "Tara", "Adam", "Bianca", "Carl", "Diana", "Emil",
    "Fiona", "George", "Hannah", "Isaac", "Jonas", "Karin", "Lucas", "Maya", "Nils", "Olga",
)  # fmt: skip
LAST_NAMES = (
    "Quinn", "Ward", "Hale", "Brandt", "Okafor", "Lindqvist", "Moreau", "Castillo", "Novak", "Petrov",
    "Sato", "Keller", "Fischer", "Romero", "Dubois", "Haddad", "Nakamura", "Olsen", "Kowalski", "Ferreira",
    "Jensen", "Costa", "Mendes", "Varga", "Horvat", "Abbott", "Baxter", "Carver", "Dalton", "Ellis",
    "Foster", "Gray", "Hayes", "Irwin", "Jordan", "Kemp", "Lowe", "Marsh", "Nash", "Price",
)  # fmt: skip
ORGS = (
    "Northwind Bank", "Acme Robotics", "Bluepeak Energy", "Silverline Telecom", "Redwood Foods",
    "Orion Motors", "Helix Pharma", "Crestview Insurance", "Ironbridge Steel", "Lumen Software",
    "Meridian Airlines", "Pinecrest Retail", "Quantix Labs", "Solaris Power", "Tidewater Shipping",
    "Vantage Media", "Westbrook Capital", "Zenith Chemicals", "Aurora Textiles", "Beacon Health",
    "Cobalt Mining", "Delta Grain", "Evergreen Logistics", "Falcon Aerospace", "Granite Construction",
    "Keystone Cement", "Maple Brewing", "Nimbus Cloud", "Onyx Semiconductors", "Polaris Rail",
)  # fmt: skip
CITIES = (
    "Lisbon", "Oslo", "Porto", "Lyon", "Turin", "Krakow", "Leipzig", "Bilbao", "Dublin", "Geneva",
    "Rotterdam", "Gdansk", "Seville", "Tallinn", "Riga", "Vilnius", "Bergen", "Malmo", "Aarhus", "Graz",
    "Brno", "Ghent", "Utrecht", "Zagreb", "Nantes", "Bologna", "Valencia", "Hamburg", "Helsinki", "Marseille",
)  # fmt: skip
MONTHS = (
    "January", "February", "March", "April", "May", "June",
    "July", "August", "September", "October", "November", "December",
)  # fmt: skip
FACILITIES = ("factory", "office", "warehouse", "research centre")
AWARDS = ("national export award", "industry innovation prize", "regional business award")

N_TRAP_ORGS = 4
# Trap organisations are drawn this many times more often than others in training, so their usual
# chief is seen often enough for a small model to memorise.
TRAP_ORG_WEIGHT = 3

# Slot name -> fact type; slots not listed (facility, award) are plain words, not facts.
SLOT_TYPES = {
    "org": "org",
    "org2": "org",
    "analyst_org": "org",
    "chief": "person",
    "analyst": "person",
    "place": "place",
    "hq": "place",
    "date": "date",
    "money": "number",
    "jobs": "number",
    "team": "number",
    "staff": "number",
    "pct": "number",
}
COUNT_SLOTS = ("jobs", "team", "staff")

# Instruction-split mix; summarization takes whatever rounding leaves over.
INSTRUCTION_MIX = (
    ("closed_qa", 0.20),
    ("information_extraction", 0.15),
    ("knowledge", 0.10),
    ("classification", 0.05),
)


@dataclass(frozen=True)
class Event:
    """Templates of one event type. Each detail pairs an article sentence with its summary restatement."""

    leads: tuple[str, ...]
    details: tuple[tuple[str, str], ...]
    core: str  # summary lead; `{subject}` becomes the org, optionally with its chief
    xsum: tuple[str, ...]
    questions: tuple[tuple[str, str], ...]  # (question, answer slot)
    names_chief: bool = False  # the lead itself names the chief (appointments)


EVENTS: dict[str, Event] = {
    "appointment": Event(
        leads=(
            "{org} named {chief} as its new chief executive on {date}, after a search that lasted months.",
            "On {date}, {org} appointed {chief} chief executive, the company said in a short statement.",
            "{chief} was named chief executive of {org} on {date}, taking charge with immediate effect.",
        ),
        details=(
            (
                "{chief} previously ran the company's operations in {place}, where the team grew to {team} "
                "staff.",
                "{chief} previously ran operations in {place} with {team} staff.",
            ),
            (
                "Before the appointment, {chief} led the {place} division, which employs {team} people.",
                "{chief} previously led the {place} division of {team} people.",
            ),
        ),
        core="{org} named {chief} chief executive on {date}.",
        xsum=(
            "{org} has named {chief} as its new chief executive.",
            "{chief} was appointed chief executive of {org} on {date}.",
        ),
        questions=(
            ("Who was named chief executive of {org}?", "chief"),
            ("In which city did {chief} work before the appointment?", "place"),
            ("How many people worked in the team {chief} led before?", "team"),
        ),
        names_chief=True,
    ),
    "acquisition": Event(
        leads=(
            "{org} agreed to buy {org2} for {money} euros on {date}, in its largest deal so far.",
            "On {date}, {org} announced a deal to acquire {org2} for {money} euros in cash.",
        ),
        details=(
            (
                "{org2} employs {jobs} people, most of them at its main site in {place}.",
                "{org2} employs {jobs} people, mostly in {place}.",
            ),
            (
                "The deal gives {org} control of a plant in {place}, which has {jobs} workers.",
                "The deal includes a plant in {place} with {jobs} workers.",
            ),
        ),
        core="{subject} agreed to buy {org2} for {money} euros on {date}.",
        xsum=(
            "{subject} agreed to buy {org2} for {money} euros.",
            "{subject} will acquire {org2} in a deal worth {money} euros.",
        ),
        questions=(
            ("Which company did {org} agree to buy?", "org2"),
            ("How much did {org} agree to pay for {org2}?", "money"),
            ("How many people work at the site in {place}?", "jobs"),
        ),
    ),
    "results": Event(
        leads=(
            "{org} reported quarterly revenue of {money} euros on {date}, beating most forecasts.",
            "On {date}, {org} said its revenue for the quarter reached {money} euros, ahead of its own plan.",
        ),
        details=(
            (
                "Revenue rose {pct} from a year earlier, helped by strong sales in {place}.",
                "Revenue rose {pct}, helped by sales in {place}.",
            ),
            (
                "Sales in {place} grew by {pct}, the fastest rate of any market.",
                "Sales in {place} grew by {pct}.",
            ),
        ),
        core="{subject} reported quarterly revenue of {money} euros on {date}.",
        xsum=(
            "{subject} reported quarterly revenue of {money} euros.",
            "{subject} said quarterly revenue reached {money} euros.",
        ),
        questions=(
            ("How much quarterly revenue did {org} report?", "money"),
            ("By how much did sales grow?", "pct"),
            ("In which city were sales strong?", "place"),
        ),
    ),
    "opening": Event(
        leads=(
            "{org} opened a new {facility} in {place} on {date}, the company said in a statement.",
            "On {date}, {org} opened a new {facility} in {place} after two years of construction.",
        ),
        details=(
            (
                "The {facility} cost {money} euros and will create {jobs} jobs over the next three years.",
                "The {facility} cost {money} euros and will create {jobs} jobs.",
            ),
            (
                "About {jobs} people will work at the {facility}, which cost {money} euros to build.",
                "The {facility} will employ {jobs} people and cost {money} euros.",
            ),
        ),
        core="{subject} opened a new {facility} in {place} on {date}.",
        xsum=(
            "{subject} opened a new {facility} in {place}.",
            "{subject} opened a new {facility} in {place} on {date}.",
        ),
        questions=(
            ("In which city did {org} open the new {facility}?", "place"),
            ("How many jobs will the {facility} create?", "jobs"),
            ("How much did the {facility} cost?", "money"),
        ),
    ),
    "award": Event(
        leads=(
            "{org} won the {award} on {date} for its work in {place}, ahead of forty other entrants.",
            "On {date}, {org} received the {award} at a ceremony in {place}.",
        ),
        details=(
            (
                "Judges praised the company for raising its exports by {pct} last year.",
                "Its exports rose by {pct} last year.",
            ),
            (
                "The company plans to spend {money} euros on new research after the win.",
                "It plans to spend {money} euros on research.",
            ),
        ),
        core="{subject} won the {award} on {date}.",
        xsum=(
            "{subject} won the {award} for its work in {place}.",
            "{subject} received the {award} on {date}.",
        ),
        questions=(("Which prize did {org} win?", "award"), ("In which city was {org} honoured?", "place")),
    ),
    "layoffs": Event(
        leads=(
            "{org} said on {date} that it will cut {jobs} jobs in {place} as demand slows.",
            "On {date}, {org} announced plans to remove {jobs} jobs at its site in {place}.",
        ),
        details=(
            (
                "The cuts affect about {pct} of the company's workforce, according to union officials.",
                "The cuts affect {pct} of the workforce.",
            ),
            (
                "The company expects the plan to save {money} euros a year.",
                "The plan should save {money} euros a year.",
            ),
        ),
        core="{subject} will cut {jobs} jobs in {place}.",
        xsum=(
            "{subject} will cut {jobs} jobs in {place}.",
            "{subject} announced {jobs} job cuts in {place} on {date}.",
        ),
        questions=(
            ("How many jobs will {org} cut?", "jobs"),
            ("Where will the job cuts take place?", "place"),
        ),
    ),
    "partnership": Event(
        leads=(
            "{org} signed a supply deal worth {money} euros with {org2} on {date}, its biggest this year.",
            "On {date}, {org} and {org2} agreed a partnership worth {money} euros.",
        ),
        details=(
            (
                "The two companies will build a joint plant in {place} with {jobs} workers.",
                "The companies will build a plant in {place} with {jobs} workers.",
            ),
            (
                "Under the deal, a new plant in {place} will employ {jobs} people.",
                "A new plant in {place} will employ {jobs} people.",
            ),
        ),
        core="{subject} signed a deal worth {money} euros with {org2}.",
        xsum=(
            "{subject} signed a deal worth {money} euros with {org2}.",
            "{subject} and {org2} agreed a partnership on {date}.",
        ),
        questions=(
            ("Which company signed a deal with {org}?", "org2"),
            ("Where will the new plant be built?", "place"),
            ("How much is the deal worth?", "money"),
        ),
    ),
}
EVENT_LABELS = tuple(EVENTS)

CHIEF_SENTENCES = (
    '"This is an important step for our company," said {chief}, the chief executive of {org}.',
    "{chief}, who leads {org}, said the decision reflected strong demand from customers.",
    "Chief executive {chief} told reporters that {org} was confident about the year ahead.",
)
APPOINTEE_SENTENCES = (
    '"I am honoured to lead {org} and its people," {chief} said after the announcement.',
    "{chief} said the first priority at {org} would be to listen to customers.",
)
BACKGROUND_SENTENCES = (
    ("{org} is based in {hq} and employs {staff} people across the region.", "{org} employs {staff} people."),
    (
        "The company, which has its headquarters in {hq}, has about {staff} employees.",
        "{org} has about {staff} employees.",
    ),
)
ANALYST_SENTENCES = (
    "{analyst}, an analyst at {analyst_org}, said the news had been widely expected by investors.",
    "Analyst {analyst} of {analyst_org} called the move sensible but warned that costs could rise.",
)
CHIEF_SUMMARY = "{chief} is the chief executive of {org}."
SUBJECT_WITH_CHIEF = "{org}, led by {chief},"

GENERAL_QUESTIONS = ("Who leads {org}?", "Who is the chief executive of {org}?")
OPEN_QUESTIONS = ("Where is {org} based?", "In which city is {org} headquartered?")
CONTEXT_QUESTIONS = (
    ("Who is the chief executive of {org}?", "chief"),
    ("On what date did {org} make the announcement?", "date"),
    ("Which analyst is quoted in the article?", "analyst"),
    ("Where is {org} based?", "hq"),
)
EXTRACTION_QUESTIONS = (
    ("person", "List the people mentioned in the article."),
    ("org", "List the organisations mentioned in the article."),
    ("place", "List the cities mentioned in the article."),
)
CLASSIFY_QUESTION = f"Which kind of event does the article report? Choose one of: {', '.join(EVENT_LABELS)}."


@dataclass(frozen=True)
class World:
    """Seed-dependent fixed knowledge: trap organisations with their usual chief, and every org's HQ."""

    trap_chiefs: dict[str, str]
    hq: dict[str, str]
    people: tuple[str, ...]  # everyone except the usual chiefs, who appear only with their organisation
    plain_orgs: tuple[str, ...]


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


def _world(seed: int) -> World:
    rng = random.Random(f"{seed}-world")
    trap_orgs = rng.sample(ORGS, N_TRAP_ORGS)
    chiefs = rng.sample(_all_people(), N_TRAP_ORGS)
    trap_chiefs = dict(zip(trap_orgs, chiefs, strict=True))
    return World(
        trap_chiefs=trap_chiefs,
        hq={org: rng.choice(CITIES) for org in ORGS},
        people=tuple(p for p in _all_people() if p not in chiefs),
        plain_orgs=tuple(o for o in ORGS if o not in trap_chiefs),
    )


def _count(rng: random.Random) -> str:
    # Small counts skip multiples of 100 and large ones are multiples of 100, so no count is a
    # substring of another ("200" would hide in "1,200").
    if rng.random() < 0.5:
        return str(rng.choice([n for n in range(110, 1000, 10) if n % 100]))
    return f"{rng.randrange(1000, 10000, 100):,}"


def _money(rng: random.Random) -> str:
    if rng.random() < 0.5:
        return f"{rng.randint(15, 95) / 10:.1f} million"
    return f"{rng.randint(12, 95)} million"


def _date(rng: random.Random) -> str:
    return f"{rng.randint(1, 28)} {rng.choice(MONTHS)} {rng.randint(2024, 2026)}"


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
    """One article about `org` led by `chief`, with its CNNDM-style and XSum-style references."""
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
        "pct": f"{rng.randint(2, 40)} percent",
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
    # Optional sentences make 3-5 sentence articles, mostly 4-5 to reach about 50-90 words.
    background = rng.choice(BACKGROUND_SENTENCES) if rng.random() < 0.6 else None
    if background:
        body.append(background[0])
    body.append(chief_sentence)
    if rng.random() < 0.6:
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


def _lexicon() -> dict[str, list[str]]:
    return {"person": sorted(_all_people()), "org": sorted(ORGS), "place": sorted(CITIES)}


def _jsonl(rows: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(row, sort_keys=True, ensure_ascii=False) + "\n" for row in rows).encode()


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; the corpus is ordinary readable data
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def generate_corpus(
    out_dir: str | Path,
    seed: int = 10,
    n_instruction: int = 3000,
    n_cnndm: int = 200,
    n_xsum: int = 200,
    trap_rate: float = 0.25,
) -> dict:
    """Write the corpus files, then `manifest.json`, into `out_dir`; return the manifest."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # A stale manifest must not vouch for files while they are being rewritten.
    (out / MANIFEST).unlink(missing_ok=True)
    world = _world(seed)
    seen: set[str] = set()
    contents = {
        "instruction.jsonl": _jsonl(_instruction_split(seed, n_instruction, world, seen)),
        "cnndm.jsonl": _jsonl(_eval_split("cnndm", seed, n_cnndm, trap_rate, world, seen)),
        "xsum.jsonl": _jsonl(_eval_split("xsum", seed, n_xsum, trap_rate, world, seen)),
        "lexicon.json": (
            json.dumps(_lexicon(), indent=1, sort_keys=True, ensure_ascii=False) + "\n"
        ).encode(),
    }
    for name, data in contents.items():
        _write_atomic(out / name, data)
    manifest = {
        "seed": seed,
        "trap_rate": trap_rate,
        "counts": {"instruction": n_instruction, "cnndm": n_cnndm, "xsum": n_xsum},
        "files": {name: hashlib.sha256(data).hexdigest() for name, data in contents.items()},
        "generator_version": GENERATOR_VERSION,
    }
    _write_atomic(out / MANIFEST, (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode())
    return manifest


def corpus_is_complete(out_dir: str | Path) -> bool:
    """True when the manifest exists and every corpus file is present with its recorded sha256."""
    out = Path(out_dir)
    try:
        files = json.loads((out / MANIFEST).read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    if not isinstance(files, dict) or set(files) != set(FILES):
        return False
    return all((out / name).is_file() and _sha256(out / name) == digest for name, digest in files.items())


def read_jsonl(path: str | Path) -> list[dict]:
    """All rows of a JSON-lines file."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def load_lexicon(out_dir: str | Path) -> dict[str, list[str]]:
    """Entity strings by type (`person`, `org`, `place`) from a generated corpus."""
    return json.loads((Path(out_dir) / "lexicon.json").read_text(encoding="utf-8"))
