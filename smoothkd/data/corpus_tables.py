"""Literal tables of the embedded corpus: the closed vocabulary (people, organisations, cities, numbers)
and the sentence templates the generator (`smoothkd.data.corpus`) fills from it.

Kept apart from the generator so the regime's content can be read and changed without touching how rows
are drawn; any change here changes the corpus, so bump `corpus.GENERATOR_VERSION` with it.
"""

from __future__ import annotations

from dataclasses import dataclass

# No first name is a suffix of another and no last name a prefix of another, so no full name can hide
# inside a different one; none of these words occurs in an organisation or city name either. 144 people:
# few enough that each full name, one token (see `corpus.entity_tokens`), is seen often in training.
FIRST_NAMES = (
    "Ada", "Leo", "Mara", "Owen", "Nina", "Hugo", "Iris", "Felix", "Clara", "Omar", "Petra", "Victor",
)  # fmt: skip
LAST_NAMES = (
    "Quinn", "Ward", "Hale", "Brandt", "Okafor", "Lindqvist", "Moreau", "Castillo", "Novak", "Petrov", "Sato",
    "Keller",
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
# Closed number tables, so every number the corpus states can be one token (see `corpus.entity_tokens`).
# Small counts skip multiples of 100 and large ones are multiples of 500, so no count hides inside another
# ("500" would hide in "1,500").
SMALL_COUNTS = tuple(str(n) for n in range(120, 1000, 30) if n % 100)
LARGE_COUNTS = tuple(f"{n:,}" for n in range(1500, 10000, 500))
MONEY_AMOUNTS = (*(f"{n / 10:.1f}" for n in range(15, 100, 10)), *(str(n) for n in range(12, 100, 3)))
PERCENTS = tuple(str(n) for n in range(2, 41))
DAYS = tuple(str(n) for n in range(1, 29))
YEARS = ("2024", "2025", "2026")
FACILITIES = ("factory", "office", "warehouse", "research centre")
AWARDS = ("national export award", "industry innovation prize", "regional business award")


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
