"""Deterministic generator of the bundled general English corpus (pretrains the embedded model).

The corpus has two parts, shuffled together:

- English prose from the Python standard library's docstrings and pydoc topics
  (:func:`stdlib_docs`; PSF license; about a fifth of the corpus), for real grammar and
  function-word statistics;
- documents written by our own template grammar (:func:`simulations.generate.demo_data.expand`):
  free sentences over a broad lexicon, everyday narratives, news-like reports, instructions
  and recipes, dialogues, numbers, dates and money, key-value forms, lists, letters, short
  facts, a glossary, and plain-language stories that touch on health, money and the law.

It shares vocabulary with the demo sites but none of their templates, so fine-tuning on a
site shows real adaptation. Documents are separated by a blank line. Rebuild with
``python -m simulations.generate.general_corpus --out simulations/data/general/corpus.txt``;
the output is fixed for a given seed and Python minor version (the stdlib prose comes from the
running interpreter; the committed corpus was built with CPython 3.11).
"""

from __future__ import annotations

import argparse
import ast
import gzip
import logging
import random
import re
import sys
import sysconfig
from collections.abc import Callable, Sequence
from pathlib import Path

from simulations.generate.demo_data import (
    _COND,
    _LAB,
    _MERCHANTS,
    _STATES,
    FIRST_F,
    FIRST_M,
    LAST,
    MONTHS,
    Slot,
    date,
    expand,
    money,
    person,
    tidy,
)

logger = logging.getLogger(__name__)

SEED = 7
TARGET_BYTES = 6_000_000

Doc = Callable[[random.Random], str]


def _w(s: str) -> list[str]:
    return [x.strip() for x in s.split(";") if x.strip()]


# ---------------------------------------------------------------------------------------------
# Lexicon
# ---------------------------------------------------------------------------------------------

_R: dict[str, Slot] = {
    "place": _w("the park;the market;the library;the kitchen;the train station;the beach;the "
                "office;the garden;the school;the bakery;the harbor;the museum;the old bridge;"
                "the hardware store;the community center;the bus stop;the river path;the "
                "farmers' market;the post office;the stadium;the hospital;the bank;the town "
                "hall;the courthouse;a small cafe;the pharmacy;the corner shop"),
    "time": ["On [Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday] [morning|afternoon|"
             "evening|]", "Last [week|winter|summer|spring|autumn|year|month]", "After dinner",
             "Early in the morning", "Yesterday", "A few days ago", "That evening",
             "In the spring of {year}", "One rainy afternoon", "Before sunrise",
             "Two years ago", "On the first day of {month}"],
    "year": lambda r: str(r.randint(1990, 2025)),
    "month": MONTHS,
    "weather": _w("it was raining hard;the sun was shining;a cold wind blew from the north;the "
                  "sky was gray and quiet;snow covered the streets;it was unusually warm;fog "
                  "hung over the river;the air smelled of rain"),
    "activity": _w("baked a loaf of bread;repaired an old bicycle;walked the dog along the "
                   "river;painted the garden fence;visited an elderly neighbor;planted tomatoes "
                   "and beans;cleaned out the garage;wrote a long letter;learned to play a new "
                   "song on the guitar;sorted through a box of old photographs;built a "
                   "bookshelf;cooked soup for the whole family;went fishing at the lake;"
                   "practiced for a piano recital;read a novel in one sitting;helped a friend "
                   "move to a new apartment;fixed a leaking tap;ran five kilometers;"
                   "organized the kitchen cupboards;drew a map of the neighborhood"),
    "feeling": _w("tired but happy;proud;a little nervous;relieved;curious;calm;grateful;"
                  "surprised;disappointed at first;excited"),
    "object": _w("a blue umbrella;an old wooden box;a set of keys;a torn map;a letter with no "
                 "stamp;a small brass bell;a photograph;a red notebook;a pair of gloves;a "
                 "broken watch;a basket of apples;a paper lantern;a kite"),
    "problem": _w("the car would not start;the bus was forty minutes late;the power went out;"
                  "the roof began to leak;a pipe burst under the sink;the shop was closed;"
                  "the phone battery died;the map was wrong;the recipe called for eggs and "
                  "there were none;the printer jammed"),
    "fix": _w("a neighbor lent a hand;they called a friend who knew what to do;they waited "
              "patiently and it worked out;they found a spare in the drawer;they walked "
              "instead;they laughed and tried again;a stranger offered help;they made a new "
              "plan"),
    "city": _w("Riverton;Lakeside;Maplewood;Fairhaven;Cedar Falls;Brookfield;Westport;"
               "Northbridge;Millbrook;Ashford;Kingsley;Port Ellis;Greenvale;Stonehaven;"
               "Oak Harbor;Silver Springs"),
    "weekday": _w("Monday;Tuesday;Wednesday;Thursday;Friday;Saturday;Sunday"),
    "food": _w("soup;bread;rice;pasta;salad;apples;cheese;eggs;beans;fish;chicken;potatoes;"
               "oranges;yogurt;carrots;tomatoes;onions;lentils;oatmeal;pancakes"),
    "animal": _w("fox;owl;deer;rabbit;heron;badger;otter;sparrow;hedgehog;squirrel;crow;"
                 "beaver;frog;turtle"),
    "color": _w("red;blue;green;yellow;gray;white;black;orange;purple;brown"),
    "adj": _w("quiet;busy;old;new;small;large;bright;narrow;crowded;peaceful;noisy;cheerful;"
              "modern;simple;friendly;beautiful"),
    "job": _w("teacher;nurse;carpenter;baker;engineer;bus driver;librarian;farmer;accountant;"
              "electrician;chef;student;mechanic;journalist;gardener;pharmacist;lawyer;"
              "bank teller;doctor;shop owner;software developer;painter"),
    "org": _w("the city council;the school board;the transit authority;the regional hospital;"
              "the state university;the public library;the parks department;the local water "
              "utility;a small technology company;the chamber of commerce;the county court;"
              "the housing authority;a regional bank;the health department"),
}


def _r(extra: dict[str, Slot] | None = None, rng: random.Random | None = None) -> dict[str, Slot]:
    rules = dict(_R)
    if rng is not None:
        rules.update(person(rng))
        friend = person(rng)
        rules.update({"f_" + k: v for k, v in friend.items()})
    if extra:
        rules.update(extra)
    return rules


def _x(t: str, rng: random.Random, rules: dict[str, Slot]) -> str:
    return tidy(expand(t, rng, rules))


# ---------------------------------------------------------------------------------------------
# Document kinds
# ---------------------------------------------------------------------------------------------


def _narrative(rng: random.Random) -> str:
    b = _r(rng=rng)
    sents = [
        "{time}, {first} {activity}.",
        "[Because|Since|Although] {weather}, {he} [decided to stay close to home|took a longer"
        " route than usual|put on a warm coat].",
        "{^he} [had always wanted to|had promised {f_first} to|had never really learned to] "
        "[do something like that|try it|finish it].",
        "[Halfway through|At one point|Just as things were going well], {problem}.",
        "[Luckily|Fortunately|In the end], {fix}.",
        "By the time {he} got home, {he} felt {feeling}.",
        "{f_first}, {his} [friend|neighbor|cousin|colleague], [called|stopped by|sent a "
        "message] to ask how it had gone.",
        "\"[It was harder than I expected|I will do it again next week|You should have "
        "seen it],\" {first} said.",
        "[Near|Outside|Behind] {place}, {he} found {object}.",
        "[Later that day|The next morning|A week later], {he} [told the story to {f_first}|"
        "wrote about it in {his} journal|could not stop thinking about it].",
        "The {adj} streets around {place} were [empty|full of people|covered in leaves].",
        "{^he} [bought|picked up|shared] some {food} and some {food} [on the way home|for "
        "dinner|with {f_first}].",
        "[It was the kind of day that|Days like that] [made everything feel possible|reminded "
        "{him} why {he} loved the town].",
    ]
    order = [0] + sorted(rng.sample(range(1, len(sents)), rng.randint(3, 7)))
    return " ".join(_x(sents[i], rng, b) for i in order)


def _news(rng: random.Random) -> str:
    b = _r({
        "n": lambda r: str(r.randint(2, 95)), "day": lambda r: str(r.randint(1, 28)),
        "pct": lambda r: f"{r.uniform(0.5, 12):.1f}",
        "mil": lambda r: f"{r.uniform(1.2, 480):.1f}", "score1": lambda r: str(r.randint(2, 6)),
        "score0": lambda r: str(r.randint(0, 1)), "inches": lambda r: f"{r.uniform(1, 9):.1f}",
        "team": _w("Hawks;Bears;Rivers;Comets;Lions;Pioneers;Harriers;Wolves;Mariners"),
        "official": ["Mayor {last}", "council member {full}", "spokesperson {full}",
                     "director {full}", "Professor {full}"],
    }, rng)
    kinds = [
        "{city} - {^org} [approved|voted to approve|announced] a budget of ${mil} million on "
        "{weekday}[, an increase of {pct} percent over last year|]. [The plan includes money "
        "for road repairs, new library hours and {n} additional bus routes.|Most of the money "
        "will go to schools and public safety.] \"[This is a responsible budget|We listened to"
        " residents],\" said {official}. [A final vote is expected next month.|Some residents"
        " said taxes were already too high.]",
        "{city} - Heavy rain dropped {inches} inches on the region [over the weekend|on "
        "{weekday}], flooding [several streets|basements near the river|a section of the main"
        " highway]. [No injuries were reported.|Two people were rescued from a stalled car.] "
        "[Forecasters expect drier weather later in the week.|Officials urged drivers to avoid "
        "flooded roads.]",
        "The {city} {team} beat the [visiting |]{city} {team} {score1}-{score0} on {weekday} "
        "[night|afternoon] [in front of {n},000 fans|at home]. [The winning goal came in the "
        "final minutes.|The team has now won {n} of its last games.] \"[We played with "
        "heart|It was a team effort],\" the coach said.",
        "Researchers at the state university [reported|found] that [people who walk for 30 "
        "minutes a day sleep better|city trees lower summer temperatures by several degrees|"
        "reading aloud to children improves their vocabulary|a common weed can clean polluted "
        "soil]. The study followed {n}0 [people|sites|families] for [two|three|five] years. "
        "[The authors said more research is needed.|The results were published this week.]",
        "[{city} - |]Unemployment in the region fell to {pct} percent in {month}, [the lowest "
        "level in a decade|down from last year]. [Hiring was strongest in health care, "
        "construction and retail.|Employers added about {n},000 jobs.] [Economists cautioned "
        "that prices are still rising.|Wages grew more slowly than rents.]",
        "[{city} - |]The annual {adj} festival drew about {n},000 visitors [this weekend|on "
        "{weekday}]. [Local bakers, musicians and artists filled the main square.|Food stalls "
        "sold out by early afternoon.] \"[It gets bigger every year|We came for the music and "
        "stayed for the food],\" said {full}, a {job} from {city}.",
        "{^org} in {city} will [open a new clinic|close the old bridge for repairs|extend "
        "library hours|start a free bus line] on {month} {day}. [The project cost ${mil} "
        "million.|Work is expected to take {n} weeks.] Residents can find details on the "
        "city website or call the information line.",
        "[A jury in {city}|The county court in {city}] [ruled|found] on {weekday} that [a local"
        " landlord must repay tenants ${n},000|a construction company broke its contract with "
        "the city|a former employee was owed back wages]. [The company said it would appeal.|"
        "Lawyers for both sides declined to comment.] The case began in {year}.",
        "[{city} - |]The regional hospital said it saw [a rise in flu cases|more visits for "
        "heat illness|fewer emergency visits] [this month|last week]. [Doctors urged residents "
        "to get vaccinated, wash their hands and stay home when sick.|Health officials "
        "reminded people to drink water and check on elderly neighbors.]",
    ]
    return _x(rng.choice(kinds), rng, b)


_TASKS: list[tuple[str, list[str]]] = [
    ("make pancakes", _w("Mix 200 grams of flour, 2 eggs and 300 milliliters of milk in a bowl;"
                         "Let the batter rest for ten minutes;Heat a little butter in a pan "
                         "over medium heat;Pour in a small ladle of batter;Cook until bubbles "
                         "appear, then flip;Serve warm with fruit or honey")),
    ("plant tomatoes", _w("Choose a sunny spot that gets at least six hours of light;Dig a "
                          "hole deeper than the pot;Set the plant in and cover the stem with "
                          "soil;Water deeply at the base;Add a stake or cage for support;Water"
                          " again whenever the top inch of soil is dry")),
    ("change a flat tire", _w("Park on flat ground and turn on the hazard lights;Loosen the "
                              "wheel nuts while the car is on the ground;Raise the car with the"
                              " jack;Remove the nuts and the flat tire;Fit the spare and "
                              "tighten the nuts by hand;Lower the car and tighten the nuts in "
                              "a star pattern")),
    ("set up a monthly budget", _w("Write down your take-home pay for the month;List fixed "
                                   "costs such as rent, insurance and loan payments;Estimate "
                                   "food, transport and other variable costs;Set aside an "
                                   "amount for savings first;Track your spending for a few "
                                   "weeks;Adjust the categories that run over")),
    ("read a rental agreement before signing", _w("Check the monthly rent and the due date;"
                                                  "Look for the amount of the security deposit"
                                                  " and how it is returned;Read the rules on "
                                                  "pets, guests and repairs;Find out how much "
                                                  "notice you must give before moving out;Ask "
                                                  "about late fees;Keep a signed copy for your"
                                                  " records")),
    ("care for a cold at home", _w("Rest as much as you can;Drink plenty of water, tea or "
                                   "soup;Use a humidifier or take a warm shower to ease "
                                   "congestion;Gargle with salt water for a sore throat;Read "
                                   "the label before taking any medicine;See a doctor if a "
                                   "fever lasts more than three days")),
    ("clean a laptop keyboard", _w("Turn off the laptop and unplug it;Turn it upside down and"
                                   " tap gently;Use compressed air between the keys;Wipe the "
                                   "keys with a cloth dampened with alcohol;Let it dry "
                                   "completely before turning it on")),
    ("brew a pot of tea", _w("Boil fresh water;Warm the pot with a little hot water;Add one "
                             "spoon of tea leaves per cup;Pour the water over the leaves;Steep"
                             " for three to five minutes;Strain and serve")),
    ("prepare for a job interview", _w("Read about the company and its products;Practice "
                                       "answers to common questions;Prepare two or three "
                                       "questions of your own;Plan your route and arrive early;"
                                       "Bring copies of your resume;Send a thank-you note "
                                       "afterward")),
    ("save money on groceries", _w("Plan meals for the week before shopping;Make a list and "
                                   "stick to it;Compare unit prices on the shelf;Buy fruit and"
                                   " vegetables in season;Cook larger batches and freeze "
                                   "leftovers;Avoid shopping when you are hungry")),
    ("help someone who has fainted", _w("Lay the person flat on their back;Raise their legs "
                                        "about 30 centimeters;Loosen tight clothing;Check that"
                                        " they are breathing;Call for emergency help if they "
                                        "do not wake up within a minute")),
    ("file a complaint about a product", _w("Gather the receipt, photos and any warranty;"
                                            "Contact the seller and describe the problem "
                                            "calmly;Ask for a repair, replacement or refund;"
                                            "Keep notes of every call;Write a formal letter if"
                                            " nothing happens;Contact a consumer protection "
                                            "office as a last step")),
    ("start running", _w("Buy comfortable shoes that fit well;Begin with a mix of walking and"
                         " running;Run three times a week with rest days between;Increase "
                         "your distance slowly;Stretch gently after each run")),
    ("open a savings account", _w("Compare interest rates and fees at a few banks;Bring an "
                                  "ID and proof of address;Choose how much to deposit to "
                                  "start;Set up an automatic transfer from your paycheck;"
                                  "Check the statement every month")),
]


def _howto(rng: random.Random) -> str:
    task, steps = rng.choice(_TASKS)
    b = _r({"task": task}, rng)
    head = _x("[How to {task}|How do you {task}?|A simple guide: how to {task}|Steps to "
              "{task}|{task}: step by step]", rng, b)
    style = rng.randrange(3)
    n = rng.randint(4, len(steps))
    chosen = steps[:n]
    if style == 0:
        body = "\n".join(f"{i + 1}. {s}." for i, s in enumerate(chosen))
    elif style == 1:
        body = "\n".join(f"- {s}." for s in chosen)
    else:
        conn = ["First,", "Next,", "Then,", "After that,", "Now", "Finally,"]
        body = " ".join(f"{conn[min(i, 4) if i < n - 1 else 5]} {s[0].lower() + s[1:]}."
                        for i, s in enumerate(chosen))
    tail = _x("[|Tip: [take your time|ask for help if you are unsure|write the steps down].|"
              "That's all there is to it.]", rng, b)
    return "\n".join(x for x in (head[:1].upper() + head[1:], body, tail) if x)


def _recipe(rng: random.Random) -> str:
    dish = rng.choice(_w("vegetable soup;lentil stew;tomato pasta;fried rice;banana bread;"
                         "potato salad;chicken curry;apple crumble;bean chili;omelette"))
    items = rng.sample(_w("2 onions;3 cloves of garlic;1 tablespoon of olive oil;400 grams of "
                          "tomatoes;1 teaspoon of salt;250 grams of rice;2 carrots;1 liter of "
                          "stock;3 eggs;200 grams of flour;100 grams of butter;2 ripe bananas;"
                          "1 cup of lentils;a handful of parsley;1 teaspoon of cumin;500 grams "
                          "of potatoes;1 red pepper;a pinch of black pepper"), rng.randint(4, 7))
    serves = rng.randint(2, 8)
    minutes = rng.choice([15, 20, 25, 30, 40, 45, 60])
    b = _r({"dish": dish, "minutes": str(minutes), "serves": str(serves)})
    head = _x("[Recipe: {dish}|{dish}|Easy {dish}] (serves {serves}, about {minutes} minutes)",
              rng, b)
    body = "Ingredients: " + ", ".join(items) + "."
    method = _x("[Method:|Directions:] [Prepare the vegetables and|First] {m1}. [Then|Next] "
                "{m2}. [Cook for about {minutes} minutes, stirring now and then.|Bake for "
                "{minutes} minutes until golden.] [Taste and add salt if needed.|Serve hot.|"
                "It keeps for three days in the fridge.]", rng,
                {**b, "m1": _w("chop everything into small pieces;warm the oil in a large pot;"
                               "mix the dry ingredients in a bowl;heat the oven to 180 degrees"),
                 "m2": _w("add the remaining ingredients;stir in the liquid and bring to a "
                          "simmer;pour the mixture into a greased tin;fold everything together "
                          "gently")})
    return "\n".join([head, body, method])


def _dialogue(rng: random.Random) -> str:
    b = _r({"price": lambda r: money(r.uniform(2, 80)), "hour": lambda r: str(r.randint(1, 11)),
            "mins": _w("00;15;30;45")}, rng)
    scenes = [
        ["{first}: Are you free on {weekday}?", "{f_first}: I think so. What did you have in "
         "mind?", "{first}: [There's a concert in the park|I was going to try the new cafe|We "
         "could go hiking by the lake].", "{f_first}: [That sounds great|Sure, why not]. What "
         "time?", "{first}: How about {hour}:{mins}?", "{f_first}: Perfect. See you then."],
        ["{first}: Excuse me, how do I get to {place}?", "{f_first}: Go straight for two "
         "blocks, then turn [left|right] at the [bakery|traffic lights|church].", "{first}: Is "
         "it far?", "{f_first}: [About ten minutes on foot|Not really, five minutes or so].",
         "{first}: Thank you so much!"],
        ["{first}: How much is this {object}?", "{f_first}: It's {price}.", "{first}: [Do you "
         "have anything cheaper|Can I pay by card]?", "{f_first}: [Yes, we take cards|This one"
         " is on sale today].", "{first}: Great, I'll take it."],
        ["{first}: I need to see a doctor about my [knee|cough|back|rash]. Is there an "
         "appointment this week?", "{f_first}: We have {weekday} at {hour}:{mins}. Does that "
         "work?", "{first}: Yes, thank you. Should I bring anything?", "{f_first}: Your "
         "insurance card and a list of any medicines you take."],
        ["{first}: Could you lend me some money until payday?", "{f_first}: How much do you "
         "need?", "{first}: About {price}. I'll pay you back on Friday.", "{f_first}: "
         "[Okay, that's fine|Sure, just don't forget]."],
        ["{first}: Did you read the lease before you signed it?", "{f_first}: Mostly. Why?",
         "{first}: Mine says I need to give sixty days' notice before moving out.",
         "{f_first}: [Really? Mine only says thirty|I should check mine tonight]."],
        ["{first}: What would you like to order?", "{f_first}: I'll have the {food} and a "
         "glass of water, please.", "{first}: Anything else?", "{f_first}: [Maybe dessert "
         "later|No, that's all], thanks."],
    ]
    lines = rng.choice(scenes)
    intro = _x("[|{time}, {first} and {f_first} talked.\n|A short conversation:\n]", rng, b)
    return intro + "\n".join(_x(line, rng, b) for line in lines)


def _numbers(rng: random.Random) -> str:
    k = rng.randrange(5)
    if k == 0:
        items = rng.sample(_w("milk;bread;eggs;coffee;apples;rice;cheese;soap;batteries;"
                              "tomatoes;tea;pasta;butter;notebook;pens"), rng.randint(3, 6))
        lines, total = [], 0.0
        for it in items:
            q = rng.randint(1, 4)
            p = round(rng.uniform(0.8, 12), 2)
            total += q * p
            lines.append(f"{it} x{q} @ {money(p)} = {money(q * p)}")
        tax = round(total * 0.07, 2)
        shop = rng.choice(_w("Corner Grocery;Main Street Market;Sunny Mart;Greenway Foods"))
        return (f"Receipt - {shop}, {date(rng)}\n" + "\n".join(lines) +
                f"\nSubtotal {money(total)}\nTax (7%) {money(tax)}\nTotal {money(total + tax)}")
    if k == 1:
        a, c = rng.randint(3, 60), rng.randint(2, 30)
        who = rng.choice(FIRST_F + FIRST_M)
        thing = rng.choice(_w("apples;stamps;marbles;books;coins;stickers;tickets"))
        if rng.random() < 0.5:
            return (f"{who} had {a + c} {thing} and gave {c} to a friend. How many are left? "
                    f"{a + c} minus {c} is {a}, so {who} has {a} {thing} left.")
        return (f"A box holds {c} {thing}. How many {thing} are in {a} boxes? {a} times {c} "
                f"is {a * c}, so there are {a * c} {thing}.")
    if k == 2:
        price = round(rng.uniform(10, 400), 2)
        pct = rng.choice([10, 15, 20, 25, 30, 40, 50])
        return (f"A jacket costs {money(price)} and is on sale for {pct}% off. The discount is "
                f"{money(price * pct / 100)}, so the sale price is "
                f"{money(price * (1 - pct / 100))}.")
    if k == 3:
        c = rng.randint(-10, 38)
        km = rng.randint(2, 400)
        h = rng.randint(2, 9)
        return (f"{c} degrees Celsius is {c * 9 / 5 + 32:.0f} degrees Fahrenheit. {km} "
                f"kilometers is about {km * 0.621:.0f} miles. One hour has 60 minutes, so {h} "
                f"hours is {h * 60} minutes.")
    dep = rng.randint(5, 20)
    rows = []
    for _ in range(rng.randint(3, 6)):
        m = rng.choice([0, 10, 15, 20, 30, 40, 45, 50])
        dur = rng.randint(25, 150)
        arr = dep * 60 + m + dur
        rows.append(f"Train {rng.randint(100, 999)} departs {dep:02d}:{m:02d}, arrives "
                    f"{arr // 60 % 24:02d}:{arr % 60:02d} ({dur} minutes)")
        dep = min(22, dep + rng.randint(1, 3))
    return f"Timetable: {rng.choice(_R['city'])} to {rng.choice(_R['city'])}\n" + "\n".join(rows)


def _form(rng: random.Random) -> str:
    p = person(rng)
    b = _r({"phone": lambda r: f"555-{r.randint(100, 999)}-{r.randint(1000, 9999)}",
            "street": lambda r: f"{r.randint(1, 999)} {r.choice(LAST)} "
                                f"{r.choice(['Street', 'Avenue', 'Road', 'Lane'])}",
            "n": lambda r: str(r.randint(1, 12)), "date": lambda r: date(r)}, rng)
    forms = [
        ("Library card application", ["Name: {full}", "Address: {street}, {city}",
                                      "Phone: {phone}", "Date of birth: {date}",
                                      "Preferred branch: [Main|North|Riverside]"]),
        ("Event registration", ["Event: {adj} {city} [book fair|5K run|food festival]",
                                "Date: {date}", "Participant: {full}", "Tickets: {n}",
                                "Dietary needs: [none|vegetarian|gluten-free]"]),
        ("Weather report", ["City: {city}", "Date: {date}",
                            "High: {hi} C", "Low: {lo} C",
                            "Conditions: [sunny|cloudy|light rain|snow showers|windy]",
                            "Chance of rain: {pct}%"]),
        ("Apartment listing", ["Location: {street}, {city}", "Bedrooms: [1|2|3]",
                               "Rent: {rent} per month", "Deposit: one month's rent",
                               "Available: {date}", "Pets: [allowed|not allowed]"]),
        ("Job posting", ["Position: {^job}", "Employer: {org}", "Location: {city}",
                         "Hours: [full-time|part-time]", "Pay: {wage} per hour",
                         "Apply by: {date}"]),
        ("Travel itinerary", ["Traveler: {full}", "From: {city}", "To: {city}",
                              "Departure: {date}", "Seat: {n}[A|B|C|D]",
                              "Baggage: [one checked bag|carry-on only]"]),
        ("Product details", ["Item: {color} {prod}", "Price: {price}", "Weight: {kg} kg",
                             "Warranty: {n} months", "In stock: [yes|no]"]),
    ]
    title, fields = rng.choice(forms)
    hi = rng.randint(-5, 35)
    b.update({"hi": str(hi), "lo": str(hi - rng.randint(3, 12)),
              "pct": str(rng.randint(0, 100)), "rent": money(rng.randint(6, 30) * 100, False),
              "wage": money(rng.uniform(12, 45)), "price": money(rng.uniform(5, 600)),
              "kg": f"{rng.uniform(0.2, 20):.1f}",
              "prod": rng.choice(_w("kettle;backpack;desk lamp;bicycle helmet;rain jacket;"
                                    "office chair;blender;tent"))})
    b.update(p)
    sep = "\n" if rng.random() < 0.7 else "; "
    return title + (":\n" if sep == "\n" else ": ") + sep.join(
        _x(f, rng, b) for f in fields[: rng.randint(3, len(fields))])


def _list(rng: random.Random) -> str:
    b = _r(rng=rng)
    kinds = [
        ("[Shopping list|Things to buy|Groceries for the week]",
         _w("milk;bread;eggs;two lemons;rice;olive oil;coffee;apples;cheese;dish soap;tea;"
            "onions;a bag of potatoes;yogurt;fresh basil;toilet paper")),
        ("[Packing list for the trip|What to pack]",
         _w("passport;phone charger;rain jacket;two pairs of shoes;toothbrush;sunscreen;a good"
            " book;medicine;water bottle;camera;travel insurance papers")),
        ("[To do this week|Weekend tasks|Reminders]",
         _w("pay the electricity bill;call the dentist;return library books;water the plants;"
            "renew the car insurance;book a haircut;send a birthday card to {f_first};fix the "
            "bike light;back up the laptop;file the receipts")),
        ("[Five habits that help you sleep better|Tips for better sleep]",
         _w("go to bed at the same time each night;keep the bedroom cool and dark;avoid "
            "screens for an hour before bed;limit caffeine after noon;get some daylight in "
            "the morning;exercise earlier in the day")),
        ("[Ways to save a little each month|Money tips]",
         _w("cancel subscriptions you do not use;cook at home more often;set up automatic "
            "savings;compare insurance prices once a year;pay credit cards in full;buy used "
            "when it makes sense")),
    ]
    head, items = rng.choice(kinds)
    chosen = rng.sample(items, rng.randint(4, min(8, len(items))))
    bullet = rng.choice(["- ", "* ", "", "num"])
    lines = [f"{i + 1}. " + _x(c, rng, b) if bullet == "num" else bullet + _x(c, rng, b)
             for i, c in enumerate(chosen)]
    return _x(head, rng, b) + ":\n" + "\n".join(lines)


def _health_story(rng: random.Random) -> str:
    b = _r({"ill": _w("a bad cough;a sore throat;a sprained ankle;headaches;trouble sleeping;"
                      "a stomach bug;back pain;an itchy rash;a high fever"),
            "med": _w("ibuprofen;acetaminophen;an antibiotic;a cough syrup;an allergy tablet;"
                      "a cream for the skin;vitamin D;a blood pressure pill;metformin;an "
                      "inhaler"),
            "days": _w("two days;three days;a week;ten days;a month"),
            "advice": _w("drink more water;rest for a few days;walk a little every day;eat "
                         "more vegetables;cut back on salt;stop smoking;get more sleep;keep "
                         "the ankle raised")}, rng)
    sents = [
        "{first} had {ill} for {days}.",
        "[At first|For a while] {he} [thought it would go away on its own|tried to ignore it"
        "|kept going to work].",
        "[Eventually|Finally|When it got worse], {he} [made an appointment with|went to see] "
        "[a doctor|the family doctor|a nurse at the walk-in clinic].",
        "The doctor [asked a few questions|listened to {his} chest|checked {his} blood "
        "pressure|looked at {his} ankle] and [said it was probably nothing serious|ordered a "
        "simple blood test|explained what was going on].",
        "{^he} was told to take {med} [twice a day|once a day|with food|for a week] and to "
        "{advice}.",
        "At the pharmacy, the pharmacist [explained how to take the medicine|warned {him} "
        "about side effects|answered {his} questions].",
        "[Within a few days|After a week|Slowly], {he} [felt much better|started to sleep "
        "again|could walk without pain].",
        "[{f_first} reminded {him} to|{^he} promised to] {advice} [from now on|in the future].",
        "[The visit cost less than {he} expected because of {his} insurance.|{^he} paid a "
        "small fee at the front desk.|]",
    ]
    k = sorted(rng.sample(range(1, len(sents)), rng.randint(4, 7)))
    return " ".join(_x(sents[i], rng, b) for i in [0] + k)


def _money_story(rng: random.Random) -> str:
    amt = rng.randint(2, 60) * 100
    rate = rng.choice([1.5, 2, 3, 3.5, 4, 4.5, 5])
    b = _r({"amt": money(amt, False), "rate": f"{rate:g}",
            "earned": money(amt * rate / 100), "goal": _w("a used car;a new laptop;a trip to "
                                                           "the coast;an emergency fund;a "
                                                           "bicycle;a course at the college"),
            "weekly": lambda r: money(r.randint(2, 20) * 5, False)}, rng)
    sents = [
        "{first} [wanted to save for|had been dreaming about|needed money for] {goal}.",
        "{^he} [opened a savings account at a local bank|moved some money into a savings "
        "account|started putting money aside] that paid {rate} percent interest a year.",
        "Every week {he} [set aside|transferred|saved] {weekly} [from {his} paycheck|after "
        "paying the bills].",
        "[After a year|By the end of the year], {he} had {amt}, and the interest added about "
        "{earned}.",
        "[{f_first}, who worked as a {job}, suggested|A friend suggested] [paying off the "
        "credit card first|keeping a simple budget|checking the bank statement every month].",
        "[The credit card charged a much higher interest rate than the savings account paid"
        ", so paying it off made sense.|A budget showed that eating out cost more than {he} "
        "thought.|The statement showed a small fee {he} had not noticed.]",
        "[When {he} finally bought {goal}, {he} paid in cash|{^he} never borrowed for it] and "
        "felt {feeling}.",
        "[Later, {he} applied for a small loan to fix the roof, and the bank looked at {his} "
        "income and savings before saying yes.|]",
    ]
    k = sorted(rng.sample(range(1, len(sents)), rng.randint(4, 6)))
    return " ".join(_x(sents[i], rng, b) for i in [0] + k)


def _law_story(rng: random.Random) -> str:
    b = _r({"dispute": _w("a broken washing machine the landlord refused to repair;a "
                          "contractor who left the kitchen half finished;a deposit that was "
                          "never returned;a parking ticket {he} thought was unfair;a used car "
                          "that broke down a week after purchase;a neighbor's fence built on "
                          "the wrong side of the line"),
            "amount": lambda r: money(r.randint(3, 60) * 50, False)}, rng)
    sents = [
        "{first} [had a problem with|got into a dispute over|was upset about] {dispute}.",
        "{^he} [read the contract again|looked at the agreement {he} had signed|found the "
        "receipt and the emails] and [saw that|realized that|noticed that] it [said nothing "
        "about it|promised repairs within thirty days|required written notice].",
        "[{f_first}, who had studied law, explained|A lawyer at a free legal clinic explained]"
        " that [a contract is a promise the law will enforce|both sides have to keep their "
        "promises|small claims court is meant for cases like this].",
        "{^he} [wrote a polite letter|sent an email|made a phone call] asking for {amount}.",
        "[When nothing happened|After two weeks without an answer], {he} [filed a claim in "
        "small claims court|asked a mediator for help|went to the courthouse to ask about "
        "the next steps].",
        "At the hearing, the judge [listened to both sides|looked at the photos and "
        "receipts|asked a few careful questions] and [ruled in {his} favor|suggested a "
        "settlement|gave both sides a week to agree].",
        "[In the end|Finally], {he} [received {amount}|got part of the money back|agreed to a "
        "compromise] and [learned to read every agreement before signing it|kept copies of "
        "everything from then on].",
        "[Some time later, {he} was called for jury duty and listened to a case about a car "
        "accident.|Later, {he} helped {f_first} write a simple will.|]",
    ]
    k = sorted(rng.sample(range(1, len(sents)), rng.randint(4, 6)))
    return " ".join(_x(sents[i], rng, b) for i in [0] + k)


_FACTS = _w(
    "Water boils at 100 degrees Celsius at sea level;The heart pumps blood through the body;"
    "Bees help plants by carrying pollen from flower to flower;The Moon orbits the Earth about "
    "once every 27 days;Plants use sunlight to turn water and carbon dioxide into sugar;A year "
    "has 365 days, and a leap year has 366;The Pacific is the largest ocean on Earth;Owls hunt "
    "mostly at night;Regular exercise strengthens the heart and lungs;Salt was once so "
    "valuable that it was used as payment;Paper was invented in China;The human body has 206 "
    "bones in adulthood;A kilometer is one thousand meters;Frogs begin life as tadpoles in "
    "water;Interest is the price of borrowing money;A contract is an agreement that the law "
    "will enforce;Vaccines train the immune system to recognize germs;Banks keep only part of"
    " their deposits as cash;Courts settle disputes between people and between people and the"
    " government;Sleep helps the brain store new memories;Iron is needed to make red blood "
    "cells;Inflation means that prices rise over time;Many birds fly south for the winter;"
    "Rivers carry soil and sand toward the sea;The skin is the largest organ of the body;"
    "Light travels faster than sound;A budget is a plan for spending and saving;Juries decide "
    "questions of fact in many trials;Vitamin C is found in oranges, peppers and strawberries;"
    "Earthquakes happen when parts of the Earth's crust move suddenly")


def _facts(rng: random.Random) -> str:
    b = _r({"animal2": lambda r: r.choice(_R["animal"])}, rng)
    chosen = rng.sample(_FACTS, rng.randint(2, 5))
    parts = [f + "." for f in chosen]
    if rng.random() < 0.5:
        parts.append(_x("The {animal} [lives in forests and fields|is often seen near water|"
                        "is most active at dawn and dusk] and [eats insects and seeds|feeds on"
                        " plants|hunts small animals].", rng, b))
    rng.shuffle(parts)
    head = _x("[Did you know?|Some facts:|Interesting facts|]", rng, b)
    return (head + " " if head else "") + " ".join(parts)


def _letter(rng: random.Random) -> str:
    b = _r({"thing": _w("the lovely dinner;your help with the move;the birthday gift;the "
                        "books you lent me;your kind words last week"),
            "item": _w("blender;pair of boots;phone case;coffee maker;lamp"),
            "order": lambda r: str(r.randint(10000, 99999)),
            "date": lambda r: date(r)}, rng)
    kinds = [
        "Dear {f_first},\nThank you so much for {thing}. [It meant a lot to me.|I really "
        "enjoyed it.] [I hope we can meet again soon.|Let me know when you are next in "
        "{city}.]\n[Warm wishes|Love|All the best],\n{first}",
        "To whom it may concern,\nOn {date} I bought a {item} from your store (order {order}). "
        "[It stopped working after two days.|It arrived damaged.] I would like a [refund|"
        "replacement]. I have attached the receipt and photos.\nSincerely,\n{full}",
        "Hi {f_first},\n[Just a quick note to say|I wanted to let you know] that [the meeting "
        "has moved to {weekday}|I will be late on {weekday}|the report is ready]. [Can you "
        "confirm?|Let me know if that works.]\nThanks,\n{first}",
        "Dear neighbors,\nWe are holding a [garden party|street cleanup|book swap] on {date} "
        "at {place}. [Everyone is welcome.|Bring a friend.] [Please bring something to share."
        "|Coffee and cake will be provided.]\nBest,\nThe {last} family",
        "Dear Hiring Manager,\nI am writing to apply for the position of {job}. [I have "
        "[three|five|ten] years of experience|I recently finished my training] and I am "
        "[careful, reliable and eager to learn|good at working with people]. [My resume is "
        "attached.|I would welcome the chance to talk.]\nYours sincerely,\n{full}",
    ]
    return _x(rng.choice(kinds), rng, b).replace(" \n", "\n")


def _qa(rng: random.Random) -> str:
    pairs = [
        ("How long should I boil an egg?", "About seven minutes for a firm yolk and five for a "
         "soft one. Cool it in cold water afterward."),
        ("What is the difference between weather and climate?", "Weather is what happens day "
         "to day; climate is the average pattern over many years."),
        ("Why do leaves change color in autumn?", "As days get shorter, trees stop making "
         "green chlorophyll, and the yellow and red colors show through."),
        ("How can I remember names better?", "Repeat the name when you hear it, use it once in"
         " conversation and link it to something you notice about the person."),
        ("What does interest mean on a loan?", "It is the extra amount you pay for borrowing, "
         "usually a percentage of what you still owe."),
        ("Why should I read a contract before signing?", "Because once you sign, you usually "
         "agree to everything in it, including fees and deadlines."),
        ("When should I see a doctor for a fever?", "If it is very high, lasts more than a few"
         " days, or comes with a stiff neck, confusion or trouble breathing."),
        ("How do I keep bread fresh?", "Store it in a paper bag at room temperature for a day "
         "or two, or freeze slices for longer."),
        ("What is a good way to start saving?", "Pick a small amount, save it automatically "
         "each payday and increase it when you can."),
        ("Why is sleep important?", "Sleep lets the body repair itself and helps the brain "
         "learn and remember."),
        ("What does a judge do?", "A judge runs the courtroom, decides questions of law and, "
         "in some cases, decides the outcome."),
        ("How often should I water houseplants?", "Most need water when the top of the soil "
         "feels dry, often once a week."),
    ]
    chosen = rng.sample(pairs, rng.randint(1, 3))
    style = rng.randrange(3)
    out = []
    for q, a in chosen:
        if style == 0:
            out.append(f"Q: {q}\nA: {a}")
        elif style == 1:
            out.append(f"Question: {q}\nAnswer: {a}")
        else:
            out.append(f"{q} {a}")
    return "\n".join(out)


def _description(rng: random.Random) -> str:
    b = _r(rng=rng)
    t = rng.choice([
        "[The|Our|This] {adj} town of {city} sits [beside a wide river|at the foot of the "
        "hills|on the coast]. [Its main street is lined with shops and cafes.|Most people "
        "know each other by name.] [In summer, visitors come for the {adj} beaches.|In "
        "winter, the streets are quiet.] [There is a {adj} library, a market on {weekday}s and"
        " a park with a pond.|The old bridge is over two hundred years old.]",
        "{full} is a {job} who lives in {city}. {^he} [starts work at seven|works nights|has "
        "two children and a dog]. [On weekends {he} {activity}.|{^he} likes {food} and long "
        "walks.] [People say {he} is {adj} and patient.|{^he} has lived there for [ten|twenty"
        "|thirty] years.]",
        "The room was {adj} and [full of light|a little dark]. A {color} sofa stood by the "
        "window, and [books were piled on every shelf|a clock ticked on the wall]. On the "
        "table lay {object}. [It smelled of coffee and old paper.|Somewhere a radio was "
        "playing.]",
    ])
    return _x(t, rng, b)


_GLOSSARY = [
    ("blood pressure", "the force of blood pushing against the walls of the arteries; it is "
     "written as two numbers, such as 120 over 80"),
    ("hypertension", "the medical word for high blood pressure, which raises the risk of heart "
     "attack and stroke"),
    ("diabetes", "a condition in which the body has trouble controlling the amount of sugar in"
     " the blood"),
    ("cholesterol", "a fatty substance in the blood; too much of the LDL kind can clog "
     "arteries"),
    ("a prescription", "a doctor's written order for a medicine, with the dose and how often "
     "to take it"),
    ("a side effect", "an unwanted effect of a medicine, such as nausea, dizziness or a rash"),
    ("a dose", "the amount of a medicine taken at one time, often measured in milligrams (mg)"),
    ("the thyroid", "a small gland in the neck that makes hormones controlling energy use"),
    ("the kidneys", "two organs that filter waste from the blood and make urine"),
    ("an antibiotic", "a medicine that kills bacteria; it does not work against viruses"),
    ("asthma", "a condition in which the airways narrow and swell, making breathing hard"),
    ("anemia", "having too few healthy red blood cells, which can cause tiredness"),
    ("a pharmacist", "a professional who prepares medicines and explains how to use them"),
    ("a checking account", "a bank account for everyday spending, with a debit card and "
     "checks"),
    ("a savings account", "a bank account that pays interest on money you keep in it"),
    ("an overdraft", "spending more money than is in your account, which often leads to a "
     "fee"),
    ("a mortgage", "a long-term loan used to buy a home, with the home as security"),
    ("APR", "the annual percentage rate, the yearly cost of borrowing including some fees"),
    ("APY", "the annual percentage yield, what a deposit earns in a year with compounding"),
    ("a wire transfer", "an electronic transfer of money from one bank to another"),
    ("a credit score", "a number that shows lenders how likely you are to repay debt"),
    ("a bank statement", "a monthly record of deposits, withdrawals, fees and the balance"),
    ("fraud", "deception used to take money or property, such as using a stolen card"),
    ("a contract", "an agreement between parties that the law will enforce"),
    ("a lease", "a contract in which a landlord lets a tenant use property for rent"),
    ("a plaintiff", "the person or company that starts a lawsuit"),
    ("a defendant", "the person or company being sued or charged"),
    ("an appeal", "a request to a higher court to review a lower court's decision"),
    ("liability", "legal responsibility for harm or for a debt"),
    ("a breach of contract", "a failure to do what a contract requires without a legal "
     "excuse"),
    ("damages", "money a court orders one party to pay another to make up for a loss"),
    ("negligence", "failing to take the care a reasonable person would take"),
    ("arbitration", "a private way to settle disputes outside court, decided by an "
     "arbitrator"),
    ("a will", "a document that says who receives a person's property after death"),
    ("jurisdiction", "the power of a court to hear a particular case"),
    ("a warranty", "a promise by a seller that a product will work as described"),
    ("photosynthesis", "the process plants use to make food from sunlight, water and air"),
    ("inflation", "a general rise in prices over time"),
    ("a budget", "a plan for how to spend and save money"),
    ("a vaccine", "a product that trains the immune system to fight a disease"),
]


def _glossary(rng: random.Random) -> str:
    chosen = rng.sample(_GLOSSARY, rng.randint(2, 4))
    style = rng.randrange(3)
    parts = []
    for term, meaning in chosen:
        if style == 0:
            parts.append(f"{term[0].upper() + term[1:]}: {meaning}.")
        elif style == 1:
            parts.append(f"What is {term}? It is {meaning}.")
        else:
            parts.append(f"{term[0].upper() + term[1:]} means {meaning}.")
    head = rng.choice(["Glossary", "Words to know", "Plain-language definitions", ""])
    return (head + "\n" if head else "") + ("\n" if style == 0 else " ").join(parts)


_NOUNS = _w(
    "teacher;child;farmer;river;window;letter;garden;machine;doctor;road;story;village;team;"
    "problem;question;morning;journey;market;mountain;friend;company;report;bicycle;storm;"
    "ship;student;engine;song;painting;idea;plan;door;horse;forest;city;neighbor;camera;"
    "clock;recipe;island;bridge;nurse;pilot;shop;customer;manager;meeting;computer;kitchen;"
    "patient;judge;tenant;lender;contract;payment;account;court;medicine;table;chair;phone;"
    "message;answer;picture;paper;pencil;bottle;basket;bag;box;coat;shoe;hat;glove;key;lamp;"
    "wall;floor;roof;street;car;truck;bus;train;plane;boat;field;hill;lake;beach;tree;flower;"
    "leaf;stone;cloud;wind;fire;light;shadow;voice;word;name;number;price;bill;receipt;loan;"
    "budget;salary;tax;fee;card;check;deposit;balance;statement;bank;office;clerk;lawyer;"
    "witness;jury;agreement;lease;landlord;owner;buyer;seller;worker;engineer;driver;cook;"
    "baker;singer;writer;reader;player;coach;runner;artist;scientist;researcher;hospital;"
    "clinic;pharmacy;tablet;dose;symptom;fever;cough;headache;injury;test;result;schedule;"
    "appointment;visit;plant;animal;bird;dog;cat;fish;insect;apple;orange;potato;sandwich;"
    "cake;cup;plate;spoon;knife;towel;blanket;pillow;mirror;ladder;hammer;rope;wheel;map;"
    "ticket;gift;party;holiday;weekend;season;month;hour;minute;question;lesson;exam;class;"
    "school;library;museum;theater;film;newspaper;article;chapter;book;page;note;list;form;"
    "website;password;email;file;program;network;signal;battery;screen;button;camera;"
    "factory;farm;harbor;tower;castle;palace;temple;station;airport;border;country;region;"
    "government;council;mayor;minister;election;vote;law;rule;right;duty;claim;dispute;"
    "decision;appeal;policy;service;product;order;delivery;package;warehouse;supplier"
)
_VERBS = _w(
    "open;close;watch;follow;paint;visit;explain;sign;borrow;check;clean;answer;notice;"
    "cross;repair;share;discover;record;ignore;help;call;ask;play;walk;talk;listen;look;"
    "start;finish;want;need;like;love;hate;prefer;enjoy;collect;count;deliver;order;"
    "return;pull;push;lift;carry;fill;empty;wash;cook;bake;plant;water;mend;fix;test;"
    "measure;compare;describe;mention;report;request;offer;accept;reject;review;approve;"
    "deny;claim;pay;earn;spend;save;invest;lend;owe;rent;own;sell;buy;order;print;type;"
    "click;download;install;update;delete;store;search;study;learn;teach;train;coach;"
    "guide;lead;manage;organize;plan;design;build;paint;draw;sketch;perform;attend;join;"
    "leave;arrive;travel;move;climb;jump;rest;sleep;wait;hope;worry;remember;forget;guess"
)
_ADJS = _w(
    "old;young;careful;quiet;heavy;bright;tired;clever;honest;patient;busy;strange;small;"
    "warm;cold;expensive;cheap;simple;difficult;important;ordinary;curious;gentle;loud;"
    "large;tiny;long;short;tall;wide;narrow;deep;shallow;early;late;fast;slow;rich;poor;"
    "clean;dirty;empty;full;fresh;stale;sweet;sour;bitter;soft;hard;smooth;rough;dark;"
    "pale;green;blue;red;white;black;yellow;golden;silver;wooden;metal;plastic;modern;"
    "ancient;local;foreign;public;private;legal;medical;financial;annual;monthly;daily;"
    "weekly;final;first;second;last;next;recent;common;rare;useful;useless;safe;dangerous;"
    "healthy;sick;happy;sad;angry;calm;nervous;proud;kind;rude;polite;funny;serious;famous"
)
_ADVS = _w("slowly;quickly;carefully;suddenly;quietly;happily;almost;finally;rarely;often;"
           "never;always;sometimes;usually;already;still;soon;later;today;yesterday;again;"
           "together;alone;nearly;barely;clearly;probably;certainly;gladly;openly")
_PREPS = _w("near;behind;across;under;beside;after;before;during;without;inside;outside;"
            "above;below;around;through;toward;against;between;beyond;within")
_DETS = _w("the;a;this;that;every;one;another;her;his;their;our;my;your;some;no")


def _past(v: str) -> str:
    if v.endswith("e"):
        return v + "d"
    if v.endswith("y") and v[-2] not in "aeiou":
        return v[:-1] + "ied"
    return v + "ed"


def _third(v: str) -> str:
    if v.endswith(("s", "sh", "ch", "x", "o")):
        return v + "es"
    if v.endswith("y") and v[-2] not in "aeiou":
        return v[:-1] + "ies"
    return v + "s"


def _plural(n: str) -> str:
    if n.endswith(("s", "sh", "ch", "x")):
        return n + "es"
    if n.endswith("y") and n[-2] not in "aeiou":
        return n[:-1] + "ies"
    if n.endswith("fe"):
        return n[:-2] + "ves"
    if n == "child":
        return "children"
    return n + "s"


def _sentences(rng: random.Random) -> str:
    """Free combinations of a broad lexicon in many sentence frames (breadth, not sense)."""
    c = rng.choice

    def np(det: bool = True) -> str:
        adj = c(_ADJS) + " " if rng.random() < 0.4 else ""
        if rng.random() < 0.15:
            return f"{c(['some', 'many', 'few', 'two', 'three', 'several', 'the'])} " \
                   f"{adj}{_plural(c(_NOUNS))}"
        d = c(_DETS)
        if d == "a" and (adj or c(_NOUNS))[0] in "aeiou":
            d = "an"
        return f"{d} {adj}{c(_NOUNS)}" if det else f"{adj}{c(_NOUNS)}"

    def name() -> str:
        return c(FIRST_F + FIRST_M) + (" " + c(LAST) if rng.random() < 0.3 else "")

    frames = [
        lambda: f"{np()} {c(_ADVS)} {_past(c(_VERBS))} {np()}.",
        lambda: f"{np()} {_past(c(_VERBS))} {np()} {c(_PREPS)} {np()}.",
        lambda: f"when {np()} {_past(c(_VERBS))} {np()}, {np()} was {c(_ADJS)}.",
        lambda: f"{np()} was {_past(c(_VERBS))} by {name()} {c(_PREPS)} {np()}.",
        lambda: f"why did {name()} {c(_VERBS)} {np()}?",
        lambda: (f"{name()} will {c(_VERBS)} {np()} "
                 + c(['tomorrow', 'next week', 'soon', 'later',
                      'on ' + c(MONTHS) + ' ' + str(rng.randint(1, 28))]) + "."),
        lambda: f"if {np()} {_third(c(_VERBS))} {np()}, {np()} will {c(_VERBS)} {c(_ADVS)}.",
        lambda: f"there are {rng.randint(2, 900)} {_plural(c(_NOUNS))} {c(_PREPS)} {np()}.",
        lambda: (f"{np()} costs {money(rng.uniform(1, 5000))}, "
                 f"{c(['which is', 'and that is', 'but it is'])} {c(_ADJS)}."),
        lambda: f"{name()} said, \"I {_past(c(_VERBS))} {np()} {c(_ADVS)}.\"",
        lambda: f"please {c(_VERBS)} {np()} {c(_PREPS)} {np()}.",
        lambda: (f"about {rng.randint(2, 98)} percent of {np()} "
                 f"{c(['were', 'are', 'seemed', 'became'])} {c(_ADJS)}."),
        lambda: (f"{name()} {c(['has', 'had', 'wants', 'needs', 'found', 'lost'])} {np()}, "
                 f"but {np()} is {c(['not', 'still', 'very', 'quite', 'rather'])} {c(_ADJS)}."),
        lambda: (f"on {date(rng)}, {np()} {_past(c(_VERBS))} {rng.randint(2, 60)} "
                 f"{_plural(c(_NOUNS))}."),
        lambda: (f"{np()} that {name()} {_past(c(_VERBS))} "
                 f"{c(['is', 'was', 'seems', 'looked'])} {c(_ADJS)}."),
        lambda: f"{c(['do', 'can', 'should', 'would'])} you {c(_VERBS)} {np()}?",
        lambda: (f"{np()} {_third(c(_VERBS))} {np()} "
                 f"{c(['every day', 'twice a week', 'each morning', 'at night', 'once a year'])}."),
        lambda: f"{name()} and {name()} {c(['were', 'are'])} {c(_ADJS)} {_plural(c(_NOUNS))}.",
        lambda: (f"{c(['first', 'then', 'next', 'finally', 'meanwhile', 'however', 'still'])}, "
                 f"{np()} {_past(c(_VERBS))} {np()}."),
        lambda: (f"{np()} is {c(['not', 'never', 'always', 'usually', 'often'])} {c(_ADJS)} "
                 f"{c(['in', 'during', 'after', 'before'])} {np()}."),
    ]
    out = []
    for _ in range(rng.randint(3, 9)):
        sent = rng.choice(frames)()
        out.append(sent[0].upper() + sent[1:])
    return " ".join(out)


# Domain vocabulary (words only, never the site templates): medicine, banking and legal terms
# used in general sentence frames, so the tokenizer and the model know the words.
_DRUGS = sorted({m["drug"] for c in _COND for m in c["meds"]})
_DRUG_DOSES = sorted({f"{m['drug']} {m['dose']}" for c in _COND for m in c["meds"]})
_CONDS = [c["cond"] for c in _COND] + [c["plain"] for c in _COND]
_SIDE = sorted({se for c in _COND for m in c["meds"] for se in m["se"]})
_SYMPTOMS = sorted({sx for c in _COND for sx in c["sx"]})
_LABS = sorted(_LAB) + _w("blood count;lipid panel;urinalysis;chest x-ray;ECG;blood sugar")
_MED_WORDS = _w("clinic;nurse;physician;pharmacist;prescription;refill;dose;tablet;capsule;"
                "inhaler;cream;milligrams;vital signs;blood pressure;heart rate;temperature;"
                "oxygen level;weight;follow-up;referral;diagnosis;symptoms;side effects;lab "
                "results;specialist;urgent care;telehealth;after-visit summary;patient portal")
_BANK_WORDS = _w("checking account;savings account;debit card;credit card;statement;balance;"
                 "deposit;withdrawal;overdraft fee;monthly service fee;direct deposit;wire "
                 "transfer;mobile deposit;ACH payment;ATM;routing number;account number;APR;"
                 "APY;interest rate;minimum payment;credit limit;payoff amount;provisional "
                 "credit;dispute;fraud alert;one-time code;autopay;Zelle;CD;loan officer;"
                 "monthly payment;principal;escrow;credit union")
_LAW_WORDS = _w("contract;agreement;clause;section;party;parties;the Effective Date;"
                "confidential information;indemnification;limitation of liability;termination;"
                "governing law;force majeure;assignment;severability;notices;warranty;"
                "arbitration;breach;cure period;written notice;damages;attorneys' fees;"
                "plaintiff;defendant;the trial court;the Court of Appeals;the Supreme Court;"
                "holding;judgment;appeal;statute;small claims court;security deposit;tenant;"
                "landlord;licensor;licensee;non-compete;employer;employee;jurisdiction")


def _domain(rng: random.Random) -> str:
    """General sentences that use medicine, banking and legal vocabulary."""
    c = rng.choice
    p = person(rng)
    name, he, his = p["full"] if rng.random() < 0.4 else p["first"], p["he"], p["his"]
    amt = money(rng.uniform(2, 4000))
    frames = [
        lambda: f"{name} picked up {c(_DRUG_DOSES)} at the pharmacy on {c(_R['weekday'])}.",
        lambda: f"Doctors often prescribe {c(_DRUGS)} for {c(_CONDS)}.",
        lambda: f"{name} asked whether {c(_SIDE)} could be caused by {c(_DRUGS)}.",
        lambda: f"The article explained {c(_CONDS)} in simple words, including {c(_SYMPTOMS)}.",
        lambda: f"{he.capitalize()} had {c(_SYMPTOMS)} and asked about the {c(_MED_WORDS)}.",
        lambda: f"The {c(_LABS)} showed a {c(['normal', 'high', 'low', 'borderline'])} value, "
                f"so the {c(_MED_WORDS)} was discussed again.",
        lambda: f"{name}'s {c(_MED_WORDS)} and {c(_MED_WORDS)} were checked on {date(rng)}.",
        lambda: f"In {c(_R['city'])}, {rng.randint(2, 60)} percent of adults have "
                f"{c(_CONDS)}, a survey found.",
        lambda: f"{name} checked {his} {c(_BANK_WORDS)} and saw a charge of {amt} from "
                f"{c(_MERCHANTS)[0].title()}.",
        lambda: f"The {c(_BANK_WORDS)} and the {c(_BANK_WORDS)} are explained on the bank's "
                f"website.",
        lambda: f"{name} moved {amt} from {his} {c(_BANK_WORDS)} on {date(rng)}.",
        lambda: f"A {c(_BANK_WORDS)} of {amt} surprised {p['him']}, so {he} called the bank.",
        lambda: f"{c(_MERCHANTS)[0]} {c(['#', 'REF ', ''])}{rng.randint(100, 99999)} "
                f"{c(['appeared', 'showed up', 'was listed'])} on the {c(_BANK_WORDS)}.",
        lambda: f"The {c(_LAW_WORDS)} in the {c(_LAW_WORDS)} confused {name}.",
        lambda: f"Under the laws of {c(_STATES)}, the {c(_LAW_WORDS)} and the "
                f"{c(_LAW_WORDS)} matter.",
        lambda: f"{name}, a {c(_R['job'])}, read about {c(_LAW_WORDS)} and {c(_LAW_WORDS)}.",
        lambda: f"The {c(_LAW_WORDS)} was signed by both {c(['parties', 'sides'])} on "
                f"{date(rng, style=0)}.",
        lambda: f"{c(['NOTICE', 'IMPORTANT', 'PLEASE NOTE', 'REMINDER', 'WARNING'])}: "
                f"{c(_MED_WORDS + _BANK_WORDS + _LAW_WORDS).upper()} "
                f"{c(['CHANGES', 'UPDATE', 'DEADLINE', 'INFORMATION'])} ON "
                f"{date(rng, style=1)}.",
        lambda: f"{c(_R['city']).upper()} {c(['NEWS', 'TIMES', 'DAILY'])}: "
                f"{c(_CONDS + _BANK_WORDS + _LAW_WORDS).upper()} IN THE SPOTLIGHT.",
    ]
    return " ".join(rng.choice(frames)() for _ in range(rng.randint(3, 7)))


_FUNCTION_WORDS = _w("the;a;an;of;to;and;in;is;for;with;on;at;by;from;that;this;your;be;"
                     "was;are;it;as;or;not;if;will;can;may;we;you;he;she;they;has;have;"
                     "had;after;before;than;per;each;any;all;no;our;their;its;into;within")
_UNITS = _w("mg;mL;kg;%;days;weeks;months;years;hours;percent;dollars;mcg;g/dL;mg/dL;cm")


def _lexicon_words() -> list[str]:
    """Distinct words in the string constants of :mod:`simulations.generate.demo_data` (words only).

    Used one at a time in random frames by :func:`_word_mix`, so the corpus covers the sites'
    vocabulary without any of their sentences, phrases or structure. Docstrings count too, so
    a new word in any string of ``demo_data`` changes the corpus (and the embedded model).
    """
    from simulations.generate import demo_data

    tree = ast.parse(Path(demo_data.__file__).read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            text = re.sub(r"\{[^}]*\}", " ", node.value)
            found.update(re.findall(r"[A-Za-z][A-Za-z']*[A-Za-z]|[A-Za-z]", text))
    return sorted(found)


_LEX: list[str] = []


def _word_mix(rng: random.Random) -> str:
    """Random word sequences over the domain and general lexicon (breadth, not sense)."""
    if not _LEX:
        _LEX.extend(sorted(set(_lexicon_words()) | set(_NOUNS) | set(_ADJS) | set(_VERBS)))
    out = []
    for _ in range(rng.randint(4, 10)):
        words = []
        for _ in range(rng.randint(4, 14)):
            u = rng.random()
            if u < 0.35:
                w = rng.choice(_FUNCTION_WORDS)
            elif u < 0.42:
                w = rng.choice([str(rng.randint(1, 99)), str(rng.randint(100, 2025)),
                                f"{rng.uniform(0.1, 99):.1f}", money(rng.uniform(1, 999)),
                                f"{rng.randint(1, 500)} {rng.choice(_UNITS)}"])
            else:
                w = rng.choice(_LEX)
                v = rng.random()
                w = w.upper() if v < 0.04 else w.capitalize() if v < 0.2 else w
            words.append(w)
            if rng.random() < 0.06:
                words[-1] += rng.choice([",", ",", ";", ":"])
        sent = " ".join(words)
        out.append(sent[0].upper() + sent[1:] + rng.choice([".", ".", ".", "?", "!", ":"]))
    return " ".join(out) if rng.random() < 0.7 else "\n".join(out)


_DOC_SKIP = {"test", "tests", "idlelib", "lib2to3", "site-packages", "tkinter", "turtledemo",
             "ensurepip", "pydoc_data", "encodings", "unittest", "distutils"}


def _prose(paragraph: str) -> str | None:
    lines = paragraph.splitlines()
    if any(ln.lstrip().startswith((">>>", "...")) or ln.startswith("    ") for ln in lines):
        return None
    text = " ".join(ln.strip() for ln in lines)
    if len(text.split()) < 8:
        return None
    return text if sum(ch.isalpha() or ch == " " for ch in text) / len(text) > 0.82 else None


def stdlib_docs() -> list[str]:
    """English prose from the Python standard library's docstrings and pydoc topics (PSF).

    Docstrings are read with :mod:`ast` (nothing is imported), modules in sorted order, code
    samples and symbol-heavy paragraphs dropped. The text depends on the Python version.
    """
    root = Path(sysconfig.get_paths()["stdlib"])
    docs: list[str] = []
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).parts
        if parts[0].startswith("config-") or _DOC_SKIP.intersection(parts):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef,
                                 ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc:
                    paras = [p for p in map(_prose, re.split(r"\n\s*\n", doc)) if p]
                    if paras:
                        docs.append("\n".join(paras))
    from pydoc_data.topics import topics

    for key in sorted(topics):
        paras = [p for p in map(_prose, re.split(r"\n\s*\n", topics[key])) if p]
        if paras:
            docs.append("\n".join(paras))
    return docs


KINDS: list[tuple[float, Doc]] = [
    (1.2, _glossary), (9.0, _sentences), (6.0, _domain), (7.0, _word_mix), (4.0, _narrative),
    (3.0, _news), (0.8, _howto),
    (0.6, _recipe), (1.8, _dialogue), (2.0, _numbers), (1.5, _form), (0.8, _list),
    (1.8, _health_story), (1.8, _money_story), (1.8, _law_story), (0.6, _facts),
    (1.2, _letter), (0.4, _qa), (1.2, _description),
]


def generate_corpus(target_bytes: int = TARGET_BYTES, seed: int = SEED,
                    with_stdlib: bool = True) -> list[str]:
    """Generate distinct documents until their UTF-8 size reaches ``target_bytes``.

    Parameters
    ----------
    target_bytes : int
        Approximate size of the corpus.
    seed : int
        Seed of the single random stream, so the output is fixed.
    with_stdlib : bool
        Start with English prose from the Python standard library (:func:`stdlib_docs`,
        PSF-licensed, at most a third of the corpus), then fill with generated documents.

    Returns
    -------
    list[str]
        Documents; none contains a blank line.
    """
    if type(target_bytes) is not int or target_bytes <= 0:
        raise ValueError(f"`target_bytes` must be a positive int, got {target_bytes!r}")
    rng = random.Random(f"general:{seed}")
    weights = [w for w, _ in KINDS]
    seen: set[str] = set()
    docs: list[str] = []
    size = 0
    if with_stdlib:
        for doc in stdlib_docs():
            if doc not in seen and size < target_bytes // 3:
                seen.add(doc)
                docs.append(doc)
                size += len(doc.encode("utf-8")) + 2
        logger.info("stdlib prose (Python %d.%d): %d documents, %d bytes", *sys.version_info[:2],
                    len(docs), size)
    while size < target_bytes:
        _, gen = rng.choices(KINDS, weights=weights)[0]
        doc = "\n".join(line.strip() for line in gen(rng).splitlines() if line.strip())
        if doc in seen:
            continue
        seen.add(doc)
        docs.append(doc)
        size += len(doc.encode("utf-8")) + 2
    rng.shuffle(docs)
    return docs


def write_corpus(out: Path, target_bytes: int = TARGET_BYTES, seed: int = SEED) -> Path:
    """Write the corpus to ``out`` (gzip if it ends in ``.gz``), documents split by blank lines."""
    docs = generate_corpus(target_bytes, seed)
    text = "\n\n".join(docs) + "\n"
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".gz":
        with gzip.GzipFile(out, "wb", mtime=0) as f:
            f.write(text.encode("utf-8"))
    else:
        out.write_text(text, encoding="utf-8", newline="\n")
    logger.info("wrote %d documents (%d bytes of text) to %s", len(docs), len(text), out)
    return out


def read_corpus(path: Path) -> list[str]:
    """Read a corpus written by :func:`write_corpus` back into documents."""
    if path.suffix == ".gz":
        text = gzip.decompress(path.read_bytes()).decode("utf-8")
    else:
        text = path.read_text(encoding="utf-8")
    return [d for d in text.split("\n\n") if d.strip()]


def main(argv: Sequence[str] | None = None) -> None:
    """Command-line entry point."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("simulations/data/general/corpus.txt"))
    p.add_argument("--bytes", type=int, default=TARGET_BYTES, help="approximate corpus size")
    p.add_argument("--seed", type=int, default=SEED)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    write_corpus(args.out, args.bytes, args.seed)


if __name__ == "__main__":
    main()
