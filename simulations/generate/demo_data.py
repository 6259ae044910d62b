"""Deterministic generator of the bundled demo site data (clinic, bank, law).

Each site gets ``train.jsonl`` with one example per line, either ``{"text": ...}`` or
``{"prompt": ..., "response": ...}``. The text is written procedurally from a small template
grammar (:func:`expand`) over rich per-domain lexicons, so the sites differ clearly in domain
(non-IID) while each site's phrasing stays consistent enough for LoRA fine-tuning to learn.

Run ``python -m simulations.generate.demo_data --out simulations/data/sites`` to rebuild the data.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import random
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Union

logger = logging.getLogger(__name__)

SEED = 20240611
SITES = ("clinic", "bank", "law")
MIN_WORDS = 30
MAX_WORDS = 120

Slot = Union[str, Sequence[str], Callable[[random.Random], str]]
Example = dict[str, str]

# ---------------------------------------------------------------------------------------------
# Template grammar
# ---------------------------------------------------------------------------------------------
# "[a|b|c]" picks one alternative (nesting allowed, "[a|]" is optional text), "{name}" expands a
# slot (a template string, a list of template strings, or a callable returning plain text) and
# "{^name}" does the same and capitalises the first letter.

_Node = Union[str, tuple[str, Any]]


@functools.lru_cache(maxsize=None)
def _parse(template: str) -> tuple[tuple[_Node, ...], ...]:
    """Parse ``template`` into alternatives of node sequences."""

    def alts(i: int, top: bool) -> tuple[list[list[_Node]], int]:
        out: list[list[_Node]] = [[]]
        buf: list[str] = []

        def flush() -> None:
            if buf:
                out[-1].append("".join(buf))
                buf.clear()

        while i < len(template):
            c = template[i]
            if c == "{":
                j = template.index("}", i)
                flush()
                out[-1].append(("s", template[i + 1 : j]))
                i = j + 1
            elif c == "[":
                flush()
                sub, i = alts(i + 1, False)
                out[-1].append(("a", tuple(tuple(s) for s in sub)))
            elif c == "|":
                flush()
                out.append([])
                i += 1
            elif c == "]" and not top:
                flush()
                return out, i + 1
            else:
                buf.append(c)
                i += 1
        if not top:
            raise ValueError(f"unclosed '[' in template {template!r}")
        flush()
        return out, i

    parsed, _ = alts(0, True)
    return tuple(tuple(s) for s in parsed)


# Probability of taking the first ``[a|b|c]`` alternative outright. Site data sets it above 0
# so that each site has a dominant house style (learnable) while the other phrasings still
# occur; the general corpus keeps it at 0 (uniform).
_STYLE_BIAS = [0.0]


def _render(seq: Sequence[_Node], rng: random.Random, rules: Mapping[str, Slot]) -> str:
    parts: list[str] = []
    for node in seq:
        if isinstance(node, str):
            parts.append(node)
        elif node[0] == "a":
            alts = node[1]
            bias = _STYLE_BIAS[0]  # no draw at 0, so unbiased output keeps its random stream
            pick = alts[0] if bias > 0 and rng.random() < bias else rng.choice(alts)
            parts.append(_render(pick, rng, rules))
        else:
            name: str = node[1]
            cap = name.startswith("^")
            value = _slot(name[1:] if cap else name, rng, rules)
            parts.append(value[:1].upper() + value[1:] if cap else value)
    return "".join(parts)


def _slot(name: str, rng: random.Random, rules: Mapping[str, Slot]) -> str:
    try:
        rule = rules[name]
    except KeyError:
        raise KeyError(f"unknown slot {{{name}}}") from None
    if callable(rule):
        return rule(rng)
    if isinstance(rule, str):
        return expand(rule, rng, rules)
    return expand(rng.choice(rule), rng, rules)


def expand(template: str, rng: random.Random, rules: Mapping[str, Slot]) -> str:
    """Expand one template with the grammar ``rules``.

    Parameters
    ----------
    template : str
        Text with ``[a|b]`` alternatives and ``{slot}`` / ``{^slot}`` references.
    rng : random.Random
        Source of every choice, so a fixed seed gives a fixed output.
    rules : Mapping[str, Slot]
        Slot name to a template, a list of templates to pick from, or a callable.

    Returns
    -------
    str
        The expanded text, before :func:`tidy`.
    """
    alts = _parse(template)
    return _render(alts[0] if len(alts) == 1 else rng.choice(alts), rng, rules)


def tidy(text: str) -> str:
    """Normalise spacing and punctuation of generated text and capitalise its start."""
    text = re.sub(r"[ \t]+", " ", text)
    text = re.sub(r" *\n *", "\n", text)
    text = re.sub(r" ([,.;:?!)])", r"\1", text)
    text = re.sub(r"\( ", "(", text)
    text = re.sub(r"\.\.+", ".", text)
    text = re.sub(r",([,.])", r"\1", text)
    text = text.strip()
    return text[:1].upper() + text[1:]


def words(s: str) -> list[str]:
    """Split on whitespace (used for the word-count window)."""
    return s.split()


def _w(s: str) -> list[str]:
    """Split a ``;``-separated lexicon string into entries."""
    return [x.strip() for x in s.split(";") if x.strip()]


# ---------------------------------------------------------------------------------------------
# Shared lexicon
# ---------------------------------------------------------------------------------------------

FIRST_F = _w(
    "Maria;Aisha;Emily;Sofia;Grace;Hannah;Fatima;Mei;Priya;Olivia;Chloe;Laura;Nadia;Rosa;Ingrid;"
    "Yuki;Amara;Leila;Julia;Sarah;Ana;Elena;Zoe;Ruth;Carmen;Helen;Joanna;Beatriz;Kavya;Tamara;"
    "Lucia;Irene;Nora;Dana;Monique;Keisha;Aaliyah;Ewa;Margaret;Linda;Patricia;Deborah;Sunita;"
    "Chiara;Agnes;Thu;Esther;Rebecca;Mariam;Greta"
)
FIRST_M = _w(
    "James;Omar;Daniel;Luis;Wei;Arjun;Samuel;Mohammed;David;Michael;Carlos;Kenji;Tomas;Ibrahim;"
    "Peter;Andre;Malik;Ravi;Jonah;Felix;Marcus;Diego;Hugo;Ethan;Noah;Kwame;Mateo;Pavel;Lars;"
    "Hassan;Brian;Kevin;Raymond;Victor;George;Isaac;Theo;Sanjay;Jamal;Robert;Thomas;Edward;"
    "Gustavo;Minh;Oliver;Stefan;Yusuf;Patrick;Leon;Frank"
)
LAST = _w(
    "Lopez;Nguyen;Smith;Patel;Okafor;Kim;Johnson;Garcia;Chen;Brown;Haddad;Rossi;Kowalski;Martin;"
    "Silva;Tanaka;Andersson;O'Brien;Mensah;Cohen;Dubois;Schmidt;Novak;Ramirez;Hughes;Ali;Murphy;"
    "Sato;Ivanova;Fischer;Walker;Bennett;Park;Costa;Adeyemi;Larsen;Moreau;Gupta;Reyes;Turner;"
    "Wright;Campbell;Ortiz;Nakamura;Evans;Price;Foster;Hansen;Bianchi;Castillo;Yilmaz;Khan;"
    "Morales;Weber;Jensen;Olsen;Baker;Carter;Duarte;Hoffman"
)
MONTHS = _w(
    "January;February;March;April;May;June;July;August;September;October;November;December"
)


def person(rng: random.Random) -> dict[str, str]:
    """Bind a person's name and pronouns (``first``, ``last``, ``he``, ``him``, ``his``...)."""
    female = rng.random() < 0.5
    first = rng.choice(FIRST_F if female else FIRST_M)
    last = rng.choice(LAST)
    return {
        "first": first,
        "last": last,
        "full": f"{first} {last}",
        "title": rng.choice(["Ms.", "Ms.", "Mrs."]) if female else "Mr.",
        "he": "she" if female else "he",
        "him": "her" if female else "him",
        "his": "her" if female else "his",
        "sex": "female" if female else "male",
        "man": "woman" if female else "man",
    }


def date(rng: random.Random, style: int | None = None,
         years: tuple[int, int] = (2019, 2025)) -> str:
    """Draw a random date in one of four common formats."""
    y = rng.randint(*years)
    m = rng.randint(1, 12)
    d = rng.randint(1, 28)
    style = rng.randrange(4) if style is None else style
    if style == 0:
        return f"{MONTHS[m - 1]} {d}, {y}"
    if style == 1:
        return f"{m:02d}/{d:02d}/{y}"
    if style == 2:
        return f"{y}-{m:02d}-{d:02d}"
    return f"{d} {MONTHS[m - 1]} {y}"


def money(x: float, cents: bool = True) -> str:
    """Format a dollar amount as ``$1,234.56`` (or ``$1,235`` without cents)."""
    return f"${x:,.2f}" if cents else f"${x:,.0f}"


def _pick(rng: random.Random, items: Sequence[str], k: int) -> list[str]:
    return rng.sample(list(items), k)


def join_list(items: Sequence[str]) -> str:
    """Join ``a, b and c``."""
    if len(items) == 1:
        return items[0]
    return ", ".join(items[:-1]) + " and " + items[-1]


# ---------------------------------------------------------------------------------------------
# Site: clinic (visit notes, medication instructions, patient questions, lab results)
# ---------------------------------------------------------------------------------------------


def _med(drug: str, dose: str, up: str, sig: str, timing: str, purpose: str, se: str,
         warn: str) -> dict[str, Any]:
    return {"drug": drug, "dose": dose, "up": up, "sig": sig, "timing": timing,
            "purpose": purpose, "se": _w(se), "warn": warn}


_COND: list[dict[str, Any]] = [
    {"cond": "hypertension", "plain": "high blood pressure", "lab": "potassium", "bp": (132, 168),
     "sx": _w("occasional morning headaches;no symptoms;mild ankle swelling;home readings in "
              "the 140s"),
     "advice": _w("limit salt to less than 2 grams a day;walk for 30 minutes on most days;check "
                  "your blood pressure at home twice a day and write it down;limit alcohol to "
                  "one drink a day;bring your home blood pressure log to the next visit"),
     "meds": [_med("lisinopril", "10 mg", "20 mg", "once daily", "at the same time each day",
                   "to lower blood pressure", "a dry cough;dizziness when standing up;a high "
                   "potassium level", "Do not take potassium supplements unless we approve "
                   "them."),
              _med("amlodipine", "5 mg", "10 mg", "once daily", "with or without food",
                   "to lower blood pressure", "ankle swelling;flushing;headache",
                   "Tell us if your ankles swell a lot."),
              _med("losartan", "50 mg", "100 mg", "once daily", "with or without food",
                   "to lower blood pressure and protect the kidneys", "dizziness;tiredness;a "
                   "high potassium level", "Do not use it if you could be pregnant."),
              _med("hydrochlorothiazide", "12.5 mg", "25 mg", "once every morning",
                   "in the morning so it does not wake you at night", "to lower blood pressure",
                   "more frequent urination;low potassium;dizziness",
                   "Drink enough water on hot days.")]},
    {"cond": "type 2 diabetes", "plain": "diabetes", "lab": "HbA1c", "bp": (112, 140),
     "sx": _w("increased thirst;fatigue;frequent urination;no symptoms;tingling in both feet"),
     "advice": _w("check your feet every day for cuts or sores;check your fasting blood sugar "
                  "each morning;choose water instead of sweet drinks;eat regular meals with "
                  "vegetables and whole grains;schedule a yearly eye exam"),
     "meds": [_med("metformin", "500 mg", "1000 mg", "twice daily", "with breakfast and dinner",
                   "to lower blood sugar", "an upset stomach;diarrhea;a metallic taste",
                   "Stop it and call us if you become very dehydrated."),
              _med("empagliflozin", "10 mg", "25 mg", "once daily", "in the morning",
                   "to lower blood sugar and protect the heart and kidneys",
                   "more frequent urination;genital yeast infections;dizziness",
                   "Drink water through the day and skip it on days you cannot eat."),
              _med("glipizide", "5 mg", "10 mg", "once daily", "30 minutes before breakfast",
                   "to lower blood sugar", "low blood sugar;weight gain;nausea",
                   "Do not take it if you are skipping a meal.")]},
    {"cond": "asthma", "plain": "asthma", "lab": None, "bp": (108, 134),
     "sx": _w("wheezing at night;cough after exercise;chest tightness in cold air;shortness of "
              "breath with colds"),
     "advice": _w("carry your rescue inhaler at all times;use a spacer with your inhaler;avoid "
                  "smoke and strong fumes;get a flu shot every fall;follow your asthma action "
                  "plan"),
     "meds": [_med("albuterol inhaler", "2 puffs", "2 to 4 puffs", "every 4 to 6 hours as needed",
                   "for wheezing or shortness of breath", "to open the airways quickly",
                   "a fast heartbeat;shakiness;nervousness",
                   "Call us if you need it more than twice a week."),
              _med("fluticasone inhaler", "2 puffs", "2 puffs of the higher strength",
                   "twice daily", "every day even when you feel well",
                   "to calm inflammation in the airways", "hoarseness;thrush in the mouth;sore "
                   "throat", "Rinse your mouth with water after each use."),
              _med("montelukast", "10 mg", "10 mg", "once daily", "at bedtime",
                   "to prevent asthma symptoms", "headache;vivid dreams;mood changes",
                   "Tell us about any change in mood or sleep.")]},
    {"cond": "high cholesterol", "plain": "high cholesterol", "lab": "LDL cholesterol",
     "bp": (112, 142), "sx": _w("no symptoms;no symptoms;a family history of heart disease"),
     "advice": _w("eat more fiber from oats, beans and vegetables;limit fried foods and fatty "
                  "meats;exercise for 150 minutes a week;recheck the lipid panel in 3 months"),
     "meds": [_med("atorvastatin", "20 mg", "40 mg", "once daily", "at bedtime",
                   "to lower LDL cholesterol", "muscle aches;an upset stomach;headache",
                   "Call us if you have unexplained muscle pain or dark urine."),
              _med("rosuvastatin", "10 mg", "20 mg", "once daily", "at any time of day",
                   "to lower LDL cholesterol", "muscle aches;headache;nausea",
                   "Avoid large amounts of grapefruit juice.")]},
    {"cond": "hypothyroidism", "plain": "an underactive thyroid", "lab": "TSH",
     "bp": (108, 138), "sx": _w("fatigue;feeling cold;dry skin;mild weight gain;constipation"),
     "advice": _w("take the tablet at the same time every morning;wait 4 hours before taking "
                  "iron or calcium;recheck the TSH in 6 weeks after any dose change"),
     "meds": [_med("levothyroxine", "50 mcg", "75 mcg", "once daily",
                   "on an empty stomach, 30 to 60 minutes before breakfast",
                   "to replace thyroid hormone", "a fast heartbeat if the dose is too high;"
                   "trouble sleeping;feeling warm", "Do not switch brands without telling us.")]},
    {"cond": "acid reflux", "plain": "acid reflux (GERD)", "lab": None, "bp": (110, 140),
     "sx": _w("heartburn after meals;a sour taste at night;burning in the chest when lying "
              "down;a chronic cough"),
     "advice": _w("avoid eating within 3 hours of bedtime;raise the head of the bed;limit coffee, "
                  "alcohol and spicy food;lose weight if advised"),
     "meds": [_med("omeprazole", "20 mg", "40 mg", "once daily", "30 minutes before breakfast",
                   "to reduce stomach acid", "headache;diarrhea;stomach pain",
                   "Call us if you have black stools or trouble swallowing."),
              _med("famotidine", "20 mg", "40 mg", "twice daily", "before breakfast and at "
                   "bedtime", "to reduce stomach acid", "headache;constipation;dizziness",
                   "Tell us if symptoms last more than 2 weeks.")]},
    {"cond": "migraine", "plain": "migraine headaches", "lab": None, "bp": (108, 136),
     "sx": _w("throbbing headaches with nausea;headaches with sensitivity to light;two to four "
              "headaches a month;headaches that start with flashing lights"),
     "advice": _w("keep a headache diary;sleep and eat on a regular schedule;limit pain "
                  "relievers to 2 days a week to avoid rebound headaches;drink enough water"),
     "meds": [_med("sumatriptan", "50 mg", "100 mg", "at the start of a migraine",
                   "and you may repeat once after 2 hours", "to stop a migraine attack",
                   "tingling;chest tightness;drowsiness",
                   "Do not take more than 200 mg in 24 hours."),
              _med("propranolol", "20 mg", "40 mg", "twice daily", "every day to prevent "
                   "attacks", "to prevent migraines", "tiredness;cold hands;vivid dreams",
                   "Do not stop it suddenly.")]},
    {"cond": "knee osteoarthritis", "plain": "arthritis in the knee", "lab": None,
     "bp": (114, 146), "sx": _w("knee pain on stairs;morning stiffness for 20 minutes;knee pain "
                                 "after walking;swelling at the end of the day"),
     "advice": _w("do the physical therapy exercises daily;use ice for 15 minutes after "
                  "activity;try a cane in the opposite hand;keep a healthy weight"),
     "meds": [_med("acetaminophen", "500 mg", "1000 mg", "every 6 hours as needed",
                   "and no more than 3,000 mg in a day", "to relieve pain",
                   "rarely any side effects at normal doses;liver injury at high doses;nausea",
                   "Check other cold medicines for acetaminophen."),
              _med("diclofenac gel", "4 grams", "4 grams", "four times daily",
                   "rubbed onto the knee", "to relieve joint pain", "skin irritation;"
                   "itching;redness", "Wash your hands after each use.")]},
    {"cond": "depression", "plain": "depression", "lab": None, "bp": (108, 138),
     "sx": _w("low mood;poor sleep;loss of interest in hobbies;low energy;trouble "
              "concentrating"),
     "advice": _w("continue weekly counseling;keep a regular sleep schedule;get outside for a "
                  "walk each day;call or text 988 if you have thoughts of harming yourself"),
     "meds": [_med("sertraline", "50 mg", "100 mg", "once daily", "in the morning with food",
                   "to treat depression", "nausea;trouble sleeping;headache",
                   "It can take 4 to 6 weeks to work; do not stop it suddenly."),
              _med("bupropion XL", "150 mg", "300 mg", "once daily", "in the morning",
                   "to treat depression", "dry mouth;trouble sleeping;anxiety",
                   "Do not take it if you have a seizure disorder.")]},
    {"cond": "anxiety", "plain": "generalized anxiety", "lab": None, "bp": (110, 140),
     "sx": _w("constant worry;a racing heart;muscle tension;trouble falling asleep"),
     "advice": _w("practice slow breathing for 5 minutes twice a day;limit caffeine;continue "
                  "therapy sessions;use the relaxation app we discussed"),
     "meds": [_med("escitalopram", "10 mg", "20 mg", "once daily", "at the same time each day",
                   "to treat anxiety", "nausea;sleepiness;sweating",
                   "It can take several weeks to help; do not stop it suddenly.")]},
    {"cond": "urinary tract infection", "plain": "a bladder infection", "lab": None,
     "bp": (108, 136), "fever": True,
     "sx": _w("burning with urination;frequent urination;lower belly pain;cloudy urine"),
     "advice": _w("drink plenty of water;finish all of the antibiotic;urinate after "
                  "intercourse;call if you develop back pain or fever"),
     "meds": [_med("nitrofurantoin", "100 mg", "100 mg", "twice daily for 5 days", "with food",
                   "to treat the infection", "nausea;headache;dark yellow urine",
                   "Finish the full course even if you feel better.")]},
    {"cond": "community-acquired pneumonia", "plain": "pneumonia", "lab": None,
     "bp": (106, 134), "fever": True,
     "sx": _w("cough with yellow sputum;fever and chills;shortness of breath on stairs;chest "
              "pain with deep breaths"),
     "advice": _w("rest and drink fluids;use a thermometer twice a day;finish all of the "
                  "antibiotic;return right away if breathing gets worse"),
     "meds": [_med("amoxicillin", "1 g", "1 g", "three times daily for 5 days",
                   "with or without food", "to treat the infection", "diarrhea;nausea;rash",
                   "Stop it and call us if you develop hives or swelling."),
              _med("doxycycline", "100 mg", "100 mg", "twice daily for 5 days",
                   "with a full glass of water", "to treat the infection", "sun sensitivity;"
                   "nausea;heartburn", "Stay upright for 30 minutes after each dose.")]},
    {"cond": "atrial fibrillation", "plain": "an irregular heart rhythm", "lab": "potassium",
     "bp": (112, 148), "sx": _w("palpitations;tiredness;lightheadedness;no symptoms"),
     "advice": _w("limit alcohol;report any unusual bleeding;do not start new pain relievers "
                  "without asking;wear a medical alert bracelet"),
     "meds": [_med("apixaban", "5 mg", "5 mg", "twice daily", "about 12 hours apart",
                   "to prevent blood clots and stroke", "easy bruising;nosebleeds;bleeding "
                   "gums", "Do not skip doses and avoid ibuprofen and naproxen."),
              _med("metoprolol succinate", "25 mg", "50 mg", "once daily", "with food",
                   "to control the heart rate", "tiredness;dizziness;cold hands",
                   "Do not stop it suddenly.")]},
    {"cond": "chronic kidney disease stage 3", "plain": "reduced kidney function",
     "lab": "eGFR", "bp": (124, 156), "sx": _w("no symptoms;mild fatigue;ankle swelling"),
     "advice": _w("avoid ibuprofen and naproxen;keep your blood pressure below 130/80;limit "
                  "salt;ask before taking any supplement"),
     "meds": [_med("losartan", "25 mg", "50 mg", "once daily", "at the same time each day",
                   "to protect the kidneys and lower blood pressure", "dizziness;a high "
                   "potassium level;tiredness", "We will check your potassium in 1 to 2 "
                   "weeks.")]},
    {"cond": "low back strain", "plain": "a strained back muscle", "lab": None,
     "bp": (110, 140), "sx": _w("lower back pain after lifting;pain when bending;stiffness in "
                                 "the morning;muscle spasms"),
     "advice": _w("keep moving and avoid bed rest;use heat for 20 minutes at a time;do the "
                  "stretches on the handout;return if you have leg weakness or numbness"),
     "meds": [_med("ibuprofen", "400 mg", "600 mg", "every 6 to 8 hours as needed",
                   "with food", "to relieve pain and inflammation", "an upset stomach;"
                   "heartburn;dizziness", "Do not use it for more than 10 days."),
              _med("cyclobenzaprine", "5 mg", "10 mg", "at bedtime as needed", "for up to 7 "
                   "days", "to relax muscle spasms", "drowsiness;dry mouth;dizziness",
                   "Do not drive after taking it.")]},
    {"cond": "iron deficiency anemia", "plain": "low iron", "lab": "hemoglobin",
     "bp": (104, 132), "sx": _w("fatigue;shortness of breath on stairs;feeling cold;pale "
                                 "skin"),
     "advice": _w("take the iron with orange juice;eat beans, lentils and leafy greens;recheck "
                  "blood counts in 8 weeks;report black stools"),
     "meds": [_med("ferrous sulfate", "325 mg", "325 mg", "once daily", "with vitamin C or "
                   "orange juice", "to rebuild iron stores", "constipation;dark stools;"
                   "nausea", "Take it 2 hours apart from antacids.")]},
    {"cond": "allergic rhinitis", "plain": "seasonal allergies", "lab": None,
     "bp": (106, 134), "sx": _w("sneezing;a runny nose;itchy eyes;nasal congestion"),
     "advice": _w("keep windows closed on high pollen days;shower after being outside;wash "
                  "bedding weekly in hot water;rinse the nose with saline"),
     "meds": [_med("cetirizine", "10 mg", "10 mg", "once daily", "in the evening",
                   "to relieve allergy symptoms", "drowsiness;dry mouth;headache",
                   "Avoid alcohol while taking it."),
              _med("fluticasone nasal spray", "2 sprays in each nostril", "2 sprays in each "
                   "nostril", "once daily", "every day during allergy season",
                   "to reduce nasal swelling", "nosebleeds;dryness;headache",
                   "Aim the spray away from the middle of the nose.")]},
    {"cond": "gout", "plain": "gout", "lab": "uric acid", "bp": (118, 150),
     "sx": _w("a hot, swollen big toe;sudden joint pain at night;a painful ankle;redness over "
              "the joint"),
     "advice": _w("drink plenty of water;limit beer and red meat;avoid sugary drinks;rest and "
                  "raise the joint during a flare"),
     "meds": [_med("colchicine", "0.6 mg", "0.6 mg", "twice daily during a flare",
                   "with or without food", "to calm a gout flare", "diarrhea;nausea;"
                   "stomach cramps", "Stop it and call us if diarrhea is severe."),
              _med("allopurinol", "100 mg", "200 mg", "once daily", "after a meal",
                   "to lower uric acid and prevent flares", "rash;an upset stomach;"
                   "drowsiness", "Stop it right away if you develop a rash.")]},
    {"cond": "eczema", "plain": "eczema", "lab": None, "bp": (106, 134),
     "sx": _w("itchy dry patches on the arms;a red rash behind the knees;cracked skin on the "
              "hands;itching that is worse at night"),
     "advice": _w("use a fragrance-free moisturizer twice a day;take short lukewarm showers;"
                  "wear cotton clothing;avoid harsh soaps"),
     "meds": [_med("hydrocortisone 1% cream", "a thin layer", "a thin layer", "twice daily "
                   "for up to 7 days", "on the affected skin", "to calm itching and redness",
                   "skin thinning with long use;burning;dryness",
                   "Do not use it on the face for more than 5 days.")]},
]

_LAB: dict[str, tuple[str, Callable[[random.Random], float]]] = {
    "HbA1c": ("%", lambda r: round(r.uniform(5.2, 10.6), 1)),
    "TSH": ("mIU/L", lambda r: round(r.uniform(0.2, 9.8), 2)),
    "LDL cholesterol": ("mg/dL", lambda r: float(r.randint(68, 212))),
    "eGFR": ("mL/min", lambda r: float(r.randint(22, 104))),
    "hemoglobin": ("g/dL", lambda r: round(r.uniform(8.4, 15.6), 1)),
    "potassium": ("mmol/L", lambda r: round(r.uniform(3.1, 5.7), 1)),
    "uric acid": ("mg/dL", lambda r: round(r.uniform(4.1, 10.4), 1)),
}


def _lab_meaning(lab: str, v: float) -> tuple[str, str]:
    """Return (category, plain-language meaning) for a lab value."""
    if lab == "HbA1c":
        if v < 5.7:
            return "normal", ("your average blood sugar over the past 3 months "
                              "is in the normal range")
        if v < 6.5:
            return "in the prediabetes range", "your average blood sugar is higher than normal " \
                "but not in the diabetes range"
        if v < 7.0:
            return "at goal", "your diabetes is well controlled; the goal for most adults is " \
                "below 7%"
        return "above goal", "your average blood sugar is above the goal of 7% for most adults"
    if lab == "TSH":
        if v < 0.4:
            return "low", "your thyroid dose may be too high"
        if v <= 4.5:
            return "normal", "your thyroid hormone level is in the normal range"
        return "high", "your thyroid is underactive or your dose may be too low"
    if lab == "LDL cholesterol":
        for hi, cat in ((100, "optimal"), (130, "near optimal"), (160, "borderline high"),
                        (190, "high")):
            if v < hi:
                return cat, f"your LDL, the bad cholesterol, is {cat}"
        return "very high", "your LDL, the bad cholesterol, is very high"
    if lab == "eGFR":
        if v >= 90:
            return "normal", "your kidneys are filtering normally"
        if v >= 60:
            return "mildly decreased", "your kidney function is mildly decreased"
        if v >= 30:
            return "moderately decreased", "your kidney function is moderately decreased " \
                "(stage 3)"
        return "severely decreased", "your kidney function is severely decreased (stage 4)"
    if lab == "hemoglobin":
        if v < 10:
            return "low", "you have anemia that needs treatment"
        if v < 12:
            return "mildly low", "you have mild anemia"
        return "normal", "your red blood cell level is normal"
    if lab == "potassium":
        if v < 3.5:
            return "low", "your potassium is low"
        if v <= 5.0:
            return "normal", "your potassium is in the normal range"
        return "high", "your potassium is high"
    if v <= 6.0:
        return "at goal", "your uric acid is at the goal of 6 or lower"
    return "above goal", "your uric acid is above the goal of 6"


_LAB_OK = frozenset(["normal", "at goal", "optimal", "near optimal", "mildly decreased"])

_CLINIC_NAMES = _w(
    "Riverside Family Clinic;Maple Street Health Center;Northgate Primary Care;Lakeview "
    "Community Clinic;Cedar Hill Medical Group;Harbor Family Medicine;Eastside Health Partners;"
    "Willow Creek Clinic"
)
_SPECIALTY = _w(
    "cardiology;endocrinology;nephrology;physical therapy;dermatology;gastroenterology;"
    "neurology;behavioral health;pulmonology;rheumatology"
)

_CLINIC_RULES: dict[str, Slot] = {
    "denies": _w("chest pain;shortness of breath;fever;vomiting;blood in the stool;vision "
                 "changes;leg swelling;weight loss;night sweats;fainting"),
    "seen": ["[was seen|presents|came in|was evaluated] [today |]for", "[is here|returns] for"],
    "followup": ["Follow up in {weeks} weeks[| or sooner if needed].",
                 "Return to clinic in {weeks} weeks.", "Next visit in {weeks} weeks.",
                 "Recheck in {weeks} weeks[ with {lab_word}|]."],
    "adherence": ["reports taking {drug} {dose} {sig} as prescribed",
                  "reports missing a few doses of {drug}",
                  "[has been|is] taking {drug} {dose} {sig} without problems",
                  "ran out of {drug} {n_days} days ago"],
    "precaution": ["Return [precautions|warning signs] [were reviewed|discussed].",
                   "{^he} knows to call the clinic if symptoms worsen.",
                   "Call 911 for chest pain, trouble breathing or confusion.",
                   "[We discussed|Reviewed] when to seek urgent care."],
    "call_if": _w("your symptoms get worse;you have a fever over 38.5 C;you cannot keep "
                  "fluids down;you feel faint;you have a rash or swelling of the face"),
    "exam": _w("lungs clear to auscultation;heart regular rate and rhythm;no peripheral edema;"
               "abdomen soft and non-tender;no focal neurologic deficits;skin warm and dry"),
}


def _clinic_bind(rng: random.Random) -> dict[str, Slot]:
    p = person(rng)
    c = rng.choice(_COND)
    m = rng.choice(c["meds"])
    age = rng.randint(19, 91)
    lo, hi = c["bp"]
    sys_bp = rng.randint(lo, hi)
    fever = c.get("fever", False)
    lab = c["lab"]
    lab_val = _LAB[lab][1](rng) if lab else 0.0
    if lab and _lab_meaning(lab, lab_val)[0] in _LAB_OK:
        status = rng.choice(["well controlled", "stable", "at goal"])
    elif lab:
        status = rng.choice(["not at goal", "worsening"])
    else:
        status = rng.choice(["well controlled", "stable", "improving", "not at goal",
                             "worsening"])
    b: dict[str, Slot] = {
        **_CLINIC_RULES, **p, "age": str(age), "cond": c["cond"], "plain": c["plain"],
        "sx": c["sx"], "sx1": rng.choice(c["sx"]), "advice": c["advice"],
        "adv1": (a := _pick(rng, c["advice"], min(2, len(c["advice"]))))[0],
        "adv2": a[-1], "drug": m["drug"], "dose": m["dose"], "up": m["up"], "sig": m["sig"],
        "timing": m["timing"], "purpose": m["purpose"], "se": m["se"],
        "se_list": join_list(_pick(rng, m["se"], 2)), "warn": m["warn"],
        "dr": "Dr. " + rng.choice(LAST), "clinic": rng.choice(_CLINIC_NAMES),
        "date": date(rng), "weeks": str(rng.choice([2, 4, 6, 8, 12])),
        "n_days": str(rng.randint(2, 9)), "duration": rng.choice(
            ["2 days", "3 days", "5 days", "a week", "10 days", "two weeks", "a month",
             "several months"]),
        "bp": f"{sys_bp}/{rng.randint(62, 84) + (sys_bp - 120) // 4}",
        "hr": str(rng.randint(58, 104 if fever else 92)),
        "temp": f"{rng.uniform(37.8, 39.3) if fever else rng.uniform(36.4, 37.3):.1f} C",
        "spo2": f"{rng.randint(92 if fever else 95, 100)}%",
        "wt": f"{rng.randint(48, 122)} kg", "status": status,
        "specialty": rng.choice(_SPECIALTY), "lab": lab or "basic metabolic panel",
        "lab_word": lab or "labs",
    }
    if lab:
        unit = _LAB[lab][0]
        cat, meaning = _lab_meaning(lab, lab_val)
        val = f"{lab_val:g}"
        b.update({"lab_val": f"{val} {unit}" if unit != "%" else f"{val}%", "lab_cat": cat,
                  "lab_mean": meaning})
    if status in ("not at goal", "worsening") and m["up"] != m["dose"]:
        b["plan_med"] = ["Increase {drug} from {dose} to {up} {sig}.",
                         "[Increase|Raise] {drug} to {up} {sig}.",
                         "Change {drug} to {up} {sig} and recheck in {weeks} weeks."]
    else:
        b["plan_med"] = ["Continue {drug} {dose} {sig}.", "No change to {drug} {dose} {sig}.",
                         "Continue current dose of {drug}."]
    return b


def _clinic_note(rng: random.Random) -> Example:
    b = _clinic_bind(rng)
    head = expand("[Visit [note|summary]|Office visit|Clinic note|Progress note|Encounter] "
                  "[{date}|- {date}|({date})]. ", rng, b)
    who = expand("[{full}, a {age}-year-old {sex}, {seen} [follow-up of|a follow-up visit for|"
                 "management of] {cond}.|{full} ({age}, {sex}) {seen} {cond} follow-up.|Patient: "
                 "{full}, {age}-year-old {sex}. Reason for visit: {cond}[ follow-up|].]", rng, b)
    subj = expand("[Subjective: |S: |]{^he} {adherence}. [{^he} reports {sx1}.|Reports {sx1}"
                  " for {duration}.|{^he} notes {sx1}.|] [Denies {denies} and {denies}.|"
                  "{^he} denies {denies}.|No {denies}.]", rng, b)
    obj = expand("[Objective: |O: |Vitals: |]BP {bp}, HR {hr}[, temp {temp}|][, SpO2 {spo2}|]"
                 "[, weight {wt}|]. [Exam: {exam}, {exam}.|{^exam}.|]", rng, b)
    if "lab_val" in b and rng.random() < 0.6:
        obj += expand(" [{lab} {lab_val} ({lab_cat}).|Recent {lab}: {lab_val}.]", rng, b)
    assess = expand("[Assessment: |A: |Impression: ]{^cond}, {status}.", rng, b)
    plan = expand("[Plan: |P: |]{plan_med} [Counseled to {adv1}.|Advised to {adv1} and to "
                  "{adv2}.|Reviewed: {adv1}.|] [Order {lab_word}.|Check {lab_word} before next "
                  "visit.|Refer to {specialty}.|] {followup} [{precaution}|]", rng, b)
    sign = expand("[ - {dr}| {dr}, {clinic}.| Signed: {dr}.|]", rng, b)
    parts = [head + who, subj, obj, assess, plan]
    sep = "\n" if rng.random() < 0.4 else " "
    return {"text": sep.join(parts) + sign}


def _clinic_med_sheet(rng: random.Random) -> Example:
    b = _clinic_bind(rng)
    t = ("[Medication instructions|Medication guide|How to take your medicine|Prescription "
         "label|Patient instructions][ for {full}|]: {^drug} {dose}. "
         "[Take {dose} {sig} {timing}.|Use {dose} {sig}, {timing}.|Directions: take {sig} "
         "{timing}.] [This medicine is used {purpose} in people with {plain}.|You are taking it "
         "{purpose}.|Purpose: {purpose}.] [Common side effects include {se_list}.|Side "
         "effects may include {se_list}.|You may notice {se_list}.] {warn} [If you miss a "
         "dose, take it when you remember unless it is almost time for the next one; do not "
         "double up.|Missed dose: skip it if the next dose is due soon.|] [Call {clinic} if "
         "{call_if}.|Call us if {call_if}.|Questions? Ask your pharmacist or call the clinic.]")
    return {"text": expand(t, rng, b)}


def _clinic_after_visit(rng: random.Random) -> Example:
    b = _clinic_bind(rng)
    t = ("[After-visit summary|Discharge instructions|Your visit today|Care plan] "
         "[({date})|for {full}|- {clinic}]:[\n| ]You were seen today for {plain}. "
         "[Your blood pressure was {bp}.|Your vital signs were normal.|Your temperature was "
         "{temp}.|] [What to do:|Next steps:|At home:]\n- {^adv1}.\n- {^adv2}.\n- "
         "[Take {drug} {dose} {sig} {timing}.|Keep taking {drug} {dose} {sig}.]"
         "[\n- Get your {lab_word} checked before the next visit.|]\n{followup} "
         "[Call us or go to urgent care if {call_if}.|{precaution}]")
    return {"text": expand(t, rng, b)}


def _clinic_lab_msg(rng: random.Random) -> Example:
    b = _clinic_bind(rng)
    while "lab_val" not in b:
        b = _clinic_bind(rng)
    t = ("[Lab result message|Message from {dr}|Test results|Patient portal message] "
         "[{date}|]: [Hello|Dear|Hi] {title} {last}, your {lab} [from {date} |]was {lab_val}, "
         "which is {lab_cat}. This means {lab_mean}. [No change to your medicines is needed."
         "|{plan_med}|We will discuss this at your next visit.] [We will repeat the test in "
         "{weeks} weeks.|{followup}|] [Please call {clinic} with any questions.|Sincerely, "
         "{dr}|- {dr}]")
    return {"text": expand(t, rng, b)}


def _clinic_phone(rng: random.Random) -> Example:
    b = _clinic_bind(rng)
    t = ("[Telephone encounter|Phone note|Nurse triage call] {date}. [{full}|Patient's "
         "[daughter|son|spouse]] called [to report|about] {sx1} [for {duration}|since "
         "yesterday]. [{^he} has {cond} and takes {drug} {dose} {sig}.|History of {cond}; on "
         "{drug}.] [Denies {denies}.|No {denies} or {denies}.] [Advised to {adv1}.|Advised: "
         "{adv1}.] [Appointment made for [tomorrow|this week|next week] with {dr}.|Will "
         "route to {dr} for review.|Callback from {dr} [today|within 24 hours].] "
         "[Caller verbalized understanding.|{precaution}]")
    return {"text": expand(t, rng, b)}


def _clinic_referral(rng: random.Random) -> Example:
    b = _clinic_bind(rng)
    t = ("[Referral to {specialty}|Dear colleague|Referral letter]: [I am referring|Please "
         "see] {full}, a {age}-year-old {sex} with {cond}[, {status}|]. [Current medicines "
         "include {drug} {dose} {sig}.|{^he} takes {drug} {dose} {sig}.] [Recent BP {bp}.|"
         "Symptoms: {sx1}.|{^he} reports {sx1} for {duration}.] [Recent {lab_word} attached."
         "|] [I would appreciate your advice on further management.|Please evaluate and "
         "advise.|Thank you for seeing {him}.] [{dr}, {clinic}|Sincerely, {dr}]")
    return {"text": expand(t, rng, b)}


_CLINIC_Q = [
    ("Can I take ibuprofen while I am on {drug}?",
     "[Ibuprofen|An anti-inflammatory pain reliever like ibuprofen] can [interact with {drug}|"
     "raise blood pressure, irritate the stomach and strain the kidneys]. [For most people "
     "acetaminophen is a safer choice for pain.|Try acetaminophen first.] [If you have {plain}, "
     "ask us before using ibuprofen for more than a few days.|Check with the clinic before "
     "using it regularly.]"),
    ("I missed a dose of {drug}. What should I do?",
     "Take the missed dose [as soon as you remember|when you remember] unless it is almost "
     "time for your next dose. [Do not take two doses at once.|Never double the dose.] "
     "{^drug} is usually taken {sig} {timing}. [A pill box or phone alarm can help you "
     "remember.|Setting a daily reminder helps.]"),
    ("How long does it take for {drug} to work?",
     "{^drug} is taken {purpose}. [Some people notice a change within days, but the full "
     "effect can take several weeks.|Give it a few weeks at {dose} {sig} before judging the "
     "effect.] Keep taking it {sig} {timing} and [tell us at your next visit how you feel."
     "|we will check how it is working in {weeks} weeks.]"),
    ("Is it normal to have {se1} on {drug}?",
     "[Yes,|It can be.] {^se1} is a [known|common] side effect of {drug}[, along with "
     "{se_list}|]. [It often improves after the first few weeks.|It is usually mild.] {warn} "
     "[Call us if it is severe or does not go away.|If it bothers you, we can discuss other "
     "options.]"),
    ("My home blood pressure readings are around {bp}. Is that okay?",
     "[A reading of {bp} is|Readings around {bp} are] [worth discussing|something we should "
     "look at]. [For most adults the goal is below 130/80.|Most people with {plain} aim for "
     "below 130/80.] [Keep a log of morning and evening readings|Write down two readings a "
     "day] and [bring it to your visit|send them through the portal]. Call 911 for chest pain "
     "or trouble breathing."),
    ("What can I do at home for {plain}?",
     "[Several things help.|Home care matters.] [Try to {adv1} and {adv2}.|It helps to {adv1}."
     " It also helps to {adv2}.] [Keep taking {drug} {dose} {sig}.|Continue {drug} as "
     "prescribed.] [Call us if {call_if}.|{^followup}]"),
]


def _clinic_qa(rng: random.Random) -> Example:
    b = _clinic_bind(rng)
    b["se1"] = rng.choice(b["se"])  # type: ignore[arg-type]
    q, a = rng.choice(_CLINIC_Q)
    prompt = expand("[Patient question: |Portal message: |Q: |]" + q + "[ I am {age}.| I have "
                    "{plain}.|]", rng, b)
    resp = expand("[Clinic answer: |A: |Nurse reply: |]" + a, rng, b)
    return {"prompt": prompt, "response": resp}


def _clinic_pr_instructions(rng: random.Random) -> Example:
    b = _clinic_bind(rng)
    prompt = expand("[Write [patient-friendly |simple |]dosing instructions for|Explain how to "
                    "take|Create a medication card for] {drug} {dose} {sig}[ for a patient with "
                    "{plain}|].", rng, b)
    resp = expand("[Take|Use] {dose} of {drug} {sig}, {timing}. [It is used {purpose}.|This "
                  "medicine works {purpose}.] [Possible side effects: {se_list}.|You might "
                  "notice {se_list}.] {warn} [Do not stop it without talking to your clinician."
                  "|Keep it at room temperature away from children.|]", rng, b)
    return {"prompt": prompt, "response": resp}


def _clinic_pr_lab(rng: random.Random) -> Example:
    b = _clinic_bind(rng)
    while "lab_val" not in b:
        b = _clinic_bind(rng)
    prompt = expand("[What does [a|an|my] {lab} of {lab_val} mean?|Explain this result: "
                    "{lab} {lab_val}.|My {lab} came back at {lab_val}. Should I worry?]", rng, b)
    resp = expand("[A|An|Your] {lab} of {lab_val} is {lab_cat}. This means {lab_mean}. "
                  "[In someone with {plain}, we usually recheck it in {weeks} weeks.|{plan_med}"
                  "|Your clinician will review it with your other results.] [Ask at your next "
                  "visit if you have questions.|]", rng, b)
    return {"prompt": prompt, "response": resp}


def _clinic_pr_summary(rng: random.Random) -> Example:
    b = _clinic_bind(rng)
    prompt = expand("[Summarize this visit for the patient|Rewrite in plain language|Patient-"
                    "friendly summary]: {age}{sex_abbr} with {cond}, {status}. BP {bp}. On "
                    "{drug} {dose} {sig}. Plan: {plan_med}", rng, {**b, "sex_abbr": b["sex"][0]
                                                                  .upper()})
    resp = expand("[You came in for|Today we checked on] {plain}[, which is {status}|]. "
                  "[Your blood pressure was {bp}.|] {plan_med} [Please {adv1}.|Remember to "
                  "{adv1}.] {followup}", rng, b)
    return {"prompt": prompt, "response": resp}


_CLINIC_KINDS = [
    (5.0, _clinic_note), (3.0, _clinic_med_sheet), (2.5, _clinic_after_visit),
    (2.0, _clinic_lab_msg), (2.0, _clinic_phone), (1.5, _clinic_referral),
    (3.0, _clinic_qa), (2.0, _clinic_pr_instructions), (1.5, _clinic_pr_lab),
    (1.5, _clinic_pr_summary),
]


# ---------------------------------------------------------------------------------------------
# Site: bank (support chats, transaction descriptions, loan and account explanations)
# ---------------------------------------------------------------------------------------------

_BANKS = _w(
    "Harborview Bank;First Meridian Credit Union;Northfield Savings Bank;Summit Trust Bank;"
    "Bluestone Federal Credit Union;Lakeshore Community Bank;Granite State Bank"
)
_MERCHANTS = [
    ("GREENLEAF MARKET", "groceries"), ("CITY WATER UTIL", "the water bill"),
    ("NORTHSTAR FITNESS", "a gym membership"), ("BLUEWAVE STREAMING", "a streaming "
     "subscription"), ("QUICKFUEL", "gas"), ("PARKSIDE PHARMACY", "a pharmacy purchase"),
    ("METRO TRANSIT", "a transit pass"), ("HILLTOP HARDWARE", "hardware supplies"),
    ("SUNRISE CAFE", "a cafe purchase"), ("ATLAS INSURANCE", "an insurance premium"),
    ("BRIGHTLINE MOBILE", "the phone bill"), ("OAKWOOD APARTMENTS", "rent"),
    ("SKYPATH AIR", "an airline ticket"), ("PAGEWORTH BOOKS", "books"),
    ("COMETCART ONLINE", "an online order"), ("RIVERBEND ELECTRIC", "the electric bill"),
    ("TOWNLINE PIZZA", "a restaurant meal"), ("SILVERLAKE DENTAL", "a dental bill"),
]
_CITY_ST = _w("SPRINGFIELD IL;AUSTIN TX;PORTLAND OR;TAMPA FL;DENVER CO;COLUMBUS OH;RALEIGH NC;"
              "MADISON WI;TUCSON AZ;ALBANY NY")
_ACCOUNTS = _w("checking account;savings account;money market account;credit card;"
               "debit card;business checking account")
_TXN_TYPES = [
    ("POS PURCHASE {m} #{store} {city}", "a debit card purchase at {m_name} paid with your PIN "
     "or chip", -1),
    ("DEBIT CARD PURCHASE {m} {city}", "a purchase at {m_name} made with your debit card", -1),
    ("ACH DEBIT {m} {ref}", "an electronic payment that {m_name} pulled from your account, "
     "usually a bill you set up to pay automatically", -1),
    ("RECURRING PAYMENT {m} {ref}", "a repeating charge from {m_name}, such as a "
     "subscription or membership", -1),
    ("ACH CREDIT PAYROLL {ref}", "a direct deposit, usually your paycheck", 1),
    ("ATM WITHDRAWAL #{store} {city}", "cash taken out at an ATM", -1),
    ("ONLINE TRANSFER TO SAV XXXX{last4b}", "money you moved to your savings account in online "
     "banking", -1),
    ("MOBILE DEPOSIT REF {ref}", "a check you deposited with the mobile app", 1),
    ("WIRE TRANSFER IN {ref}", "an incoming wire transfer from another bank", 1),
    ("ZELLE PAYMENT TO {first2} {ref}", "money you sent to {first2} through Zelle", -1),
]

_BANK_RULES: dict[str, Slot] = {
    "greet": ["Hi[,| there,|!]", "Hello[,|!]", "Good [morning|afternoon],", "Hey,"],
    "agent_open": ["[Thanks for contacting {bank}|Thank you for reaching out|Happy to help]"
                   "[, {first}|]. [My name is {agent}.|This is {agent}.|]",
                   "Hi {first}, this is {agent} with {bank}."],
    "verify": ["For your security, I have verified your identity with a one-time code.",
               "I have confirmed your identity[ through the app|].",
               "[Thanks for verifying your identity.|You are verified.]"],
    "close": ["Is there anything else I can help with?", "Anything else I can do for you "
              "today?", "Have a great [day|evening]!", "Thanks for banking with {bank}."],
    "biz_days": _w("2;3;5;7;10"),
    "thanks": ["Thanks[!|, that helps.| so much.]", "Great, thank you.", "Okay, got it."],
}


def _pmt(principal: float, apr: float, months: int) -> float:
    r = apr / 100 / 12
    return principal * r / (1 - (1 + r) ** -months)


def _bank_bind(rng: random.Random) -> dict[str, Slot]:
    p = person(rng)
    m, m_name = rng.choice(_MERCHANTS)
    fmt, meaning, sign = rng.choice(_TXN_TYPES)
    loan = rng.choice([("auto loan", (8000, 42000), (4.9, 11.9), [36, 48, 60, 72]),
                       ("personal loan", (2000, 25000), (7.9, 19.9), [24, 36, 48, 60]),
                       ("mortgage", (120000, 520000), (5.5, 7.6), [180, 360]),
                       ("home equity loan", (15000, 90000), (7.0, 9.9), [60, 120, 180])])
    principal = round(rng.uniform(*loan[1]) / 500) * 500
    apr = round(rng.uniform(*loan[2]), 2)
    months = rng.choice(loan[3])
    pay = _pmt(principal, apr, months)
    amt = round(rng.choice([rng.uniform(3, 90), rng.uniform(20, 400), rng.uniform(100, 2500)]), 2)
    bal = round(rng.uniform(200, 9000), 2)
    apy = round(rng.uniform(0.5, 4.8), 2)
    cc_apr = round(rng.uniform(17.9, 29.9), 2)
    cc_bal = round(rng.uniform(300, 8000), 2)
    b: dict[str, Slot] = {
        **_BANK_RULES, **p, "bank": rng.choice(_BANKS),
        "agent": rng.choice(FIRST_F + FIRST_M), "acct": rng.choice(_ACCOUNTS),
        "last4": f"{rng.randint(0, 9999):04d}", "last4b": f"{rng.randint(0, 9999):04d}",
        "m": m, "m_name": m.title(), "m_what": m_name,
        "store": str(rng.randint(100, 9999)), "city": rng.choice(_CITY_ST),
        "ref": f"{rng.randint(10**7, 10**8 - 1)}", "first2": rng.choice(FIRST_F + FIRST_M).upper(),
        "amt": money(amt), "date": date(rng, years=(2023, 2025)),
        "mmdd": f"{rng.randint(1, 12):02d}/{rng.randint(1, 28):02d}",
        "fee": rng.choice(["$35.00", "$34.00", "$29.00", "$15.00"]),
        "mfee": rng.choice(["$12.00", "$10.00", "$15.00", "$5.00"]),
        "minbal": rng.choice(["$1,500", "$500", "$2,500", "$1,000"]),
        "case": f"{rng.choice(['DS', 'FR', 'CS', 'LN'])}-{rng.randint(10000, 99999)}",
        "loan": loan[0], "principal": money(principal, cents=False), "apr": f"{apr:.2f}%",
        "term": f"{months // 12} years" if months % 12 == 0 else f"{months} months",
        "months": str(months), "payment": money(pay),
        "interest": money(pay * months - principal, cents=False),
        "total": money(pay * months, cents=False),
        "bal": money(bal), "apy": f"{apy:.2f}%", "yr_int": money(bal * apy / 100),
        "cc_apr": f"{cc_apr:.2f}%", "cc_bal": money(cc_bal),
        "cc_int": money(cc_bal * cc_apr / 100 / 12),
        "cutoff": rng.choice(["4 p.m. Eastern", "3 p.m. Eastern", "5 p.m. local time"]),
        "wire_fee": rng.choice(["$25", "$30", "$20"]), "intl_fee": rng.choice(["$45", "$50"]),
    }
    b["desc"] = expand(fmt, rng, b)
    b["desc_mean"] = expand(meaning, rng, b)
    b["sign"] = "credit" if sign > 0 else "debit"
    return b


_BANK_ISSUES = [
    ("I see a charge of {amt} from {m} on {date} that I don't recognize.",
     "[I'm sorry about that.|Let's take care of that.] [I've locked your card ending in {last4}"
     " so no new charges can go through.|Your card ending in {last4} is now blocked.] I've "
     "opened dispute case {case} for the {amt} charge. [You should see a provisional credit "
     "within {biz_days} business days|A temporary credit will post within {biz_days} business "
     "days] while we investigate, and a new card will arrive in 5 to 7 business days."),
    ("I was charged an overdraft fee of {fee} yesterday. Can you refund it?",
     "[I see the {fee} overdraft fee on your {acct} ending in {last4}.|I can see that fee.] "
     "[Since this is your first one in the last 12 months, I've refunded it as a courtesy.|"
     "As a one-time courtesy I've reversed the fee.] The refund will show within {biz_days} "
     "business days. [You can also link your savings account for overdraft protection or turn "
     "on low-balance alerts in the app.|I'd suggest setting up a low-balance alert so this "
     "doesn't happen again.]"),
    ("I lost my debit card. What should I do?",
     "[I've locked the card ending in {last4} right away.|Your card ending in {last4} is "
     "locked now.] [I've ordered a replacement that will arrive in 5 to 7 business days.|A new "
     "card is on the way and should arrive within 7 business days.] [You can keep using your "
     "digital wallet in the meantime.|If you find the old card, please cut it up.] Please "
     "review recent transactions and let us know if any are not yours."),
    ("I deposited a check for {amt} with the mobile app but only part of it is available.",
     "[That's expected for larger deposits.|That's a standard hold.] [The first $225 is "
     "available the next business day, and the rest is usually released within 2 business "
     "days.|Part of the deposit is on hold until the check clears, usually within 2 business "
     "days.] [You'll get a notice in the app explaining the hold.|The hold notice is in your "
     "message center.]"),
    ("I sent a wire transfer on {date} and the recipient hasn't received it.",
     "[I checked the wire.|Let me look at that wire.] Domestic wires sent before {cutoff} on a "
     "business day usually arrive the same day; international wires can take 1 to 5 business "
     "days. [The wire shows as completed on our side with reference {ref}.|Your wire was "
     "released with reference {ref}.] [The receiving bank can use that reference to trace it."
     "|I've opened a trace, case {case}.]"),
    ("I'm locked out of online banking.",
     "{verify} [I've unlocked your profile.|Your online banking access is restored.] [Please "
     "reset your password using the link we just sent to your email.|Use the reset link in "
     "your email to create a new password.] [We will never ask for your password or one-time "
     "code by phone or text.|Never share your one-time code with anyone, even someone who says"
     " they are from {bank}.]"),
    ("Can I get a higher limit on my credit card?",
     "[I can submit a credit limit increase request.|Yes, you can request an increase.] "
     "[We'll review your income, payment history and current balance.|The decision depends on"
     " your payment history and income.] [This may result in a hard inquiry on your credit "
     "report.|A hard credit inquiry may be required.] [You'll hear back within {biz_days} "
     "business days.|Most decisions are made within {biz_days} business days.]"),
    ("When will my direct deposit show up?",
     "[Direct deposits usually post on the morning of payday.|Your paycheck posts as soon as "
     "we receive it from your employer.] [With early pay, it can arrive up to 2 days early.|"
     "Some employers send the file early, so it may arrive sooner.] Make sure your employer "
     "has the correct routing number and the account number for your {acct} ending in {last4}."),
    ("I'd like a payoff quote for my {loan}.",
     "[I can help with that.|Sure.] [The payoff amount includes the remaining principal plus "
     "interest that accrues daily until the payment arrives.|Your payoff quote includes daily "
     "interest up to the payoff date.] [The quote is good for 10 days.|The quote is valid for "
     "10 calendar days.] [I've sent it to your secure message center.|You'll find it in your "
     "documents tab.]"),
    ("I want to close my {acct}.",
     "[I'm sorry to see you go.|I can help with that.] [Before we close it, the balance needs "
     "to be moved and any pending transactions must clear.|Please make sure no automatic "
     "payments are still linked to it.] [We'll mail a check for the remaining balance or send"
     " it to another account.|Any remaining balance can be transferred to your other account."
     "] [You'll receive written confirmation within {biz_days} business days.|We'll send a "
     "confirmation letter once it is closed.]"),
    ("I'm traveling abroad next week. Do I need to tell you?",
     "[You don't need to set a travel notice anymore.|No travel notice is needed.] [Your card "
     "works in most countries, but a foreign transaction fee of 3% may apply.|Keep in mind "
     "that purchases abroad may carry a 3% foreign transaction fee.] [Turn on alerts so you "
     "can confirm any unusual purchases quickly.|Make sure your phone number is current so we"
     " can text you about unusual activity.]"),
    ("How do I set up autopay for my credit card?",
     "[In the app, go to Payments and choose Autopay.|You can set it up under Payments, then "
     "Autopay.] You can pay the minimum due, the full statement balance or a fixed amount. "
     "[Paying the statement balance in full each month avoids interest.|If you pay the "
     "statement balance in full, you won't be charged interest on purchases.] [Autopay "
     "starts with your next statement.|The first automatic payment happens on your next due "
     "date.]"),
    ("What happens if I take money out of my CD early?",
     "[An early withdrawal penalty applies.|There is a penalty for early withdrawal.] "
     "[For CDs of 12 months or less, the penalty is 90 days of interest; for longer terms it "
     "is 180 days of interest.|The penalty is usually 90 days of interest on terms up to one "
     "year.] [At maturity you have a 10-day grace period to withdraw without a penalty.|"
     "There is no penalty during the grace period after the CD matures.]"),
    ("I sent {amt} with Zelle to the wrong person.",
     "[I'm sorry that happened.|That's frustrating.] [Zelle payments to an enrolled recipient "
     "are sent right away and usually cannot be reversed.|Once a Zelle payment is sent, we "
     "generally can't cancel it.] [Please contact the recipient and ask them to send it back."
     "|The best first step is to ask the recipient to return it.] [If that doesn't work, I can"
     " file a claim, case {case}, but recovery is not guaranteed.|I've noted the details in "
     "case {case} in case you need to follow up.]"),
]


def _bank_chat(rng: random.Random) -> Example:
    b = _bank_bind(rng)
    q, a = rng.choice(_BANK_ISSUES)
    turns = [expand("Customer: {greet} " + q, rng, b), expand("Agent: {agent_open} " + a, rng, b)]
    if rng.random() < 0.6:
        turns.append(expand("Customer: {thanks}[ How long will that take?| Will I get a "
                            "confirmation?|]", rng, b))
        turns.append(expand("Agent: [You're welcome.|My pleasure.|No problem.] {close}", rng, b))
    sep = "\n" if rng.random() < 0.6 else " "
    head = expand("[Chat transcript - {bank}\n|Support chat, {date}\n||]", rng, b)
    return {"text": head + sep.join(turns)}


def _bank_txn(rng: random.Random) -> Example:
    b = _bank_bind(rng)
    t = ("[Transaction explanation|What this charge means|Statement help|Transaction detail]: "
         "[The line|The entry|An entry] \"{mmdd} {desc} {amt}\" on your {acct} ending in "
         "{last4} is {desc_mean}. [It posted as a {sign} of {amt}.|The {sign} of {amt} posted on "
         "{date}.] [If you don't recognize it, contact {bank} within 60 days of the statement "
         "date to dispute it.|You have 60 days from the statement date to dispute a charge you "
         "did not authorize.|Tap the transaction in the app to see the merchant details.]")
    return {"text": expand(t, rng, b)}


def _bank_statement(rng: random.Random) -> Example:
    b = _bank_bind(rng)
    bal = rng.uniform(400, 6000)
    lines = [expand("[Statement excerpt|Account activity|Recent transactions] - {acct} ending "
                    "in {last4}, {bank}", rng, b),
             f"Opening balance {money(bal)}"]
    month = rng.randint(1, 12)
    day = 1
    for _ in range(rng.randint(3, 6)):
        day += rng.randint(1, 5)
        bb = _bank_bind(rng)
        fmt, _, sign = rng.choice(_TXN_TYPES)
        desc = expand(fmt, rng, bb)
        amt = round(rng.uniform(4, 180) if sign < 0 else rng.uniform(150, 2400), 2)
        bal += sign * amt
        lines.append(f"{month:02d}/{day:02d} {desc} {'-' if sign < 0 else '+'}{money(amt)} "
                     f"balance {money(bal)}")
    lines.append(f"Closing balance {money(bal)}")
    return {"text": "\n".join(lines)}


def _bank_loan(rng: random.Random) -> Example:
    b = _bank_bind(rng)
    t = ("[Loan estimate|Payment explanation|How your loan works|Loan summary]: [A|Your] "
         "{principal} {loan} at {apr} APR for {term} ({months} payments) has a monthly "
         "payment of about {payment}. [Over the full term you would pay about {interest} in "
         "interest, or {total} in total.|Total interest over the life of the loan comes to "
         "about {interest}.] [Each payment covers the interest due for the month first, and the"
         " rest reduces the principal.|Early payments are mostly interest; later payments are "
         "mostly principal.] [Extra payments go toward principal and can shorten the loan.|"
         "There is no prepayment penalty, so paying extra reduces the interest you pay.|The APR"
         " includes the interest rate and certain fees.]")
    return {"text": expand(t, rng, b)}


def _bank_account_info(rng: random.Random) -> Example:
    b = _bank_bind(rng)
    t = [("[Savings explanation|How interest works|Account terms]: A balance of {bal} in a "
          "savings account earning {apy} APY would earn about {yr_int} in a year if the balance"
          " stays the same. [APY includes the effect of compounding.|Interest compounds daily "
          "and is paid monthly.] [Rates are variable and may change after the account is "
          "opened.|The rate can change at any time.]"),
         ("[Credit card interest|Card terms]: If you carry a balance of {cc_bal} on a card "
          "with a {cc_apr} APR, you would pay about {cc_int} in interest for one month. [Paying"
          " the full statement balance by the due date avoids interest on purchases.|Paying "
          "only the minimum means the balance takes much longer to pay off.] [Late payments "
          "may trigger a late fee of up to $40.|]"),
         ("[Monthly service fee|Account notice|Fee schedule]: The {acct} has a monthly "
          "service fee of {mfee}. [The fee is waived if you keep a minimum daily balance of "
          "{minbal} or receive at least $500 in direct deposits each month.|You can avoid the "
          "fee with a {minbal} minimum daily balance.] [Overdraft fees are {fee} per item, up "
          "to 3 per day.|An overdraft fee of {fee} applies when a payment is made with "
          "insufficient funds.]"),
         ("[Notice of overdrawn account|Account alert|Important notice] {date}: Dear {first} "
          "{last}, your {acct} ending in {last4} is overdrawn by {amt}. [Please deposit funds "
          "to bring the balance above zero.|Please make a deposit as soon as possible.] [An "
          "overdraft fee of {fee} was charged.|A fee of {fee} was applied.] [If the account "
          "stays negative for 60 days it may be closed.|Contact {bank} if you need help.]"),
         ("[Case note|Fraud case|Dispute record] {case}, opened {date}: Customer {first} {last}"
          " reported [an unrecognized charge|a card that was lost|a suspicious login] [of {amt} "
          "from {m}|]. [Card ending in {last4} locked.|Card blocked and reissued.] "
          "[Provisional credit of {amt} issued.|Provisional credit pending review.|No credit "
          "issued yet.] Status: [open|under review|closed - resolved in customer's favor]. "
          "[Agent: {agent}.|]")]
    return {"text": expand(rng.choice(t), rng, b)}


def _bank_pr_question(rng: random.Random) -> Example:
    b = _bank_bind(rng)
    q, a = rng.choice(_BANK_ISSUES)
    return {"prompt": expand("[Customer: |Customer message: |Q: |]" + q, rng, b),
            "response": expand("[Agent: |A: |]" + a, rng, b)}


def _bank_pr_txn(rng: random.Random) -> Example:
    b = _bank_bind(rng)
    return {"prompt": expand("[Explain this transaction|What is this charge|What does this "
                             "mean]: \"{mmdd} {desc} {amt}\"[?|]", rng, b),
            "response": expand("[This is|It is|That entry is] {desc_mean}. [It was a {sign} "
                               "of {amt} to your {acct}.|The amount was {amt}.] [If you didn't "
                               "make it, you can dispute it from the transaction details "
                               "screen.|Contact {bank} if you don't recognize it.]", rng, b)}


def _bank_pr_loan(rng: random.Random) -> Example:
    b = _bank_bind(rng)
    return {"prompt": expand("[What is the monthly payment on|How much would I pay each month "
                             "for|Calculate the payment for] a {principal} {loan} at {apr} "
                             "for {term}?", rng, b),
            "response": expand("[The monthly payment is about {payment}.|You would pay about "
                               "{payment} a month.] [Over {months} payments, total interest "
                               "is about {interest}.|That adds up to {total}, of which about "
                               "{interest} is interest.] [This estimate does not include taxes"
                               " or insurance.|Your actual rate depends on your credit "
                               "history.|]", rng, b)}


def _bank_pr_draft(rng: random.Random) -> Example:
    b = _bank_bind(rng)
    q, a = rng.choice(_BANK_ISSUES)
    return {"prompt": expand("[Draft a reply to|Write an email to] a customer who [wrote|said]"
                             ": \"" + q + "\"", rng, b),
            "response": expand("Dear {first}, [thank you for contacting {bank}.|thank you for "
                               "your message.] " + a + " [Sincerely|Best regards|Kind regards],"
                               " {agent}, {bank}", rng, b)}


_BANK_KINDS = [
    (5.0, _bank_chat), (2.5, _bank_txn), (1.5, _bank_statement), (2.0, _bank_loan),
    (3.0, _bank_account_info), (3.0, _bank_pr_question), (1.5, _bank_pr_txn),
    (1.5, _bank_pr_loan), (1.5, _bank_pr_draft),
]


# ---------------------------------------------------------------------------------------------
# Site: law (contract clauses, legal Q&A, case summaries)
# ---------------------------------------------------------------------------------------------

_CO_A = _w("Northwind;Crescent;Bluefield;Ironwood;Silverline;Redstone;Brightwater;Keystone;"
           "Pinecrest;Harborline;Oakmont;Clearview;Stonebridge;Westfield;Evergreen;Summit")
_CO_B = _w("Logistics;Software;Properties;Manufacturing;Health Systems;Analytics;Foods;"
           "Construction;Media;Energy;Consulting;Retail;Freight;Biotech;Design;Capital")
_CO_C = _w("LLC;Inc.;Corp.;LP;Co.;Holdings LLC;Group, Inc.")
_STATES = _w("Delaware;New York;California;Texas;Illinois;Washington;Massachusetts;Colorado;"
             "Georgia;Ohio")
_NUMW = {1: "one", 2: "two", 3: "three", 5: "five", 7: "seven", 10: "ten", 12: "twelve",
         14: "fourteen", 15: "fifteen", 20: "twenty", 21: "twenty-one", 24: "twenty-four",
         30: "thirty", 45: "forty-five", 60: "sixty", 90: "ninety", 180: "one hundred eighty"}
_AGREEMENTS = [
    ("Master Services Agreement", "Provider", "Client"), ("Commercial Lease", "Landlord",
     "Tenant"), ("Mutual Nondisclosure Agreement", "Disclosing Party", "Receiving Party"),
    ("Employment Agreement", "Company", "Employee"), ("Software License Agreement",
     "Licensor", "Licensee"), ("Supply Agreement", "Supplier", "Buyer"),
    ("Consulting Agreement", "Consultant", "Company"), ("Residential Lease", "Landlord",
     "Tenant"), ("Asset Purchase Agreement", "Seller", "Purchaser"),
]


def _nw(n: int) -> str:
    return f"{_NUMW[n]} ({n})"


_CLAUSES: list[tuple[str, list[str], list[str]]] = [
    ("Confidentiality",
     ["The {b_role} shall hold all Confidential Information of the {a_role} in strict "
      "confidence and shall not disclose it to any third party without the prior written "
      "consent of the {a_role}. [These obligations survive termination of this Agreement "
      "for a period of {years} years.|This obligation shall survive for {years} years after "
      "termination.]",
      "Each party agrees to use the other party's Confidential Information solely to perform "
      "its obligations under this Agreement and to protect it with at least the same degree of "
      "care it uses for its own information, but no less than reasonable care. [Confidential "
      "Information does not include information that is or becomes publicly available through "
      "no fault of the receiving party.|]"],
     ["The {b_role} must keep the {a_role}'s private information secret and cannot share it "
      "without written permission[, even for {years} years after the contract ends|].",
      "Each side can only use the other side's confidential information to do the work under "
      "the contract and must protect it carefully. [Public information is not covered.|]"]),
    ("Indemnification",
     ["The {b_role} shall indemnify, defend and hold harmless the {a_role} and its officers, "
      "directors and employees from and against any and all claims, losses, damages and "
      "expenses, including reasonable attorneys' fees, arising out of [the {b_role}'s breach "
      "of this Agreement|the {b_role}'s negligence or willful misconduct]."],
     ["If someone sues the {a_role} because of [something the {b_role} did wrong|the {b_role}'s"
      " breach], the {b_role} must defend the {a_role} and pay the resulting costs, including "
      "lawyers' fees."]),
    ("Limitation of Liability",
     ["In no event shall either party be liable for any indirect, incidental, special or "
      "consequential damages, including lost profits, [even if advised of the possibility of "
      "such damages|arising out of this Agreement]. Each party's total liability shall not "
      "exceed [the fees paid under this Agreement in the {months} months preceding the "
      "claim|{cap}]."],
     ["Neither side has to pay for indirect losses such as lost profits, and the most either "
      "side can owe is [the fees paid in the last {months} months|{cap}]."]),
    ("Termination",
     ["Either party may terminate this Agreement [for convenience|for any reason] upon {days} "
      "days' prior written notice to the other party. Either party may terminate this "
      "Agreement immediately if the other party materially breaches it and fails to cure the "
      "breach within {cure} days after receiving written notice.",
      "This Agreement shall commence on the Effective Date and continue for an initial term of "
      "{years} years, and shall renew automatically for successive one-year terms unless "
      "either party gives notice of non-renewal at least {days} days before the end of the "
      "then-current term."],
     ["Either side can end the contract by giving {days_n} days' written notice, and can end "
      "it right away if the other side seriously breaks the contract and does not fix it "
      "within {cure_n} days.",
      "The contract lasts {years} years and then renews every year unless one side says it "
      "wants out at least {days_n} days before the term ends."]),
    ("Governing Law",
     ["This Agreement shall be governed by and construed in accordance with the laws of the "
      "State of {state}, without regard to its conflict of laws principles. [The parties "
      "consent to the exclusive jurisdiction of the state and federal courts located in "
      "{state}.|]"],
     ["{state} law applies to the contract[, and any lawsuit must be brought in courts in "
      "{state}|], no matter where the parties are located."]),
    ("Force Majeure",
     ["Neither party shall be liable for any failure or delay in performance caused by events "
      "beyond its reasonable control, including [fire, flood, earthquake|acts of God, war, "
      "terrorism], [pandemic, |]labor disputes or governmental action, provided that the "
      "affected party gives prompt notice and uses reasonable efforts to resume performance."],
     ["If something outside a party's control, such as a natural disaster or war, stops it from "
      "performing, it is not in breach, as long as it tells the other side quickly and tries "
      "to get back on track."]),
    ("Assignment",
     ["Neither party may assign or transfer this Agreement without the prior written consent of "
      "the other party, which shall not be unreasonably withheld; provided, however, that "
      "either party may assign this Agreement to a successor in connection with a merger or "
      "sale of substantially all of its assets."],
     ["Neither side can hand the contract over to someone else without the other's written "
      "consent, except to a company that buys or merges with it."]),
    ("Severability",
     ["If any provision of this Agreement is held to be invalid or unenforceable, the remaining"
      " provisions shall continue in full force and effect, and the invalid provision shall be "
      "modified to the minimum extent necessary to make it enforceable."],
     ["If a court strikes down one part of the contract, the rest still applies, and the bad "
      "part is narrowed just enough to make it valid."]),
    ("Notices",
     ["All notices under this Agreement shall be in writing and shall be deemed given when "
      "delivered personally, one business day after being sent by overnight courier, or "
      "{days} days after being mailed by certified mail, return receipt requested, to the "
      "addresses set forth above."],
     ["Official notices must be in writing and count as received when handed over, the next "
      "business day by courier, or {days_n} days after certified mail."]),
    ("Payment Terms",
     ["The {b_role} shall pay all undisputed invoices within {days} days of receipt. Late "
      "payments shall bear interest at the rate of {late}% per month or the maximum rate "
      "permitted by law, whichever is less.",
      "Rent in the amount of {rent} shall be due on the first day of each month. A late fee of"
      " {latefee} shall apply to any payment received after the {grace} day of the month."],
     ["The {b_role} has {days_n} days to pay each bill, and late payments cost {late}% "
      "interest per month.",
      "Rent of {rent} is due on the first of each month, with a {latefee} late fee if it is "
      "paid after the {grace} day."]),
    ("Warranties",
     ["The {a_role} warrants that the services will be performed in a professional and "
      "workmanlike manner consistent with generally accepted industry standards. EXCEPT AS "
      "EXPRESSLY SET FORTH HEREIN, THE {A_ROLE} DISCLAIMS ALL OTHER WARRANTIES, EXPRESS OR "
      "IMPLIED, INCLUDING ANY IMPLIED WARRANTY OF MERCHANTABILITY OR FITNESS FOR A PARTICULAR "
      "PURPOSE."],
     ["The {a_role} promises to do the work competently, but gives no other promises about the"
      " results, including that it will suit a particular purpose."]),
    ("Dispute Resolution",
     ["Any dispute arising out of or relating to this Agreement shall be resolved by binding "
      "arbitration administered by the American Arbitration Association under its Commercial "
      "Arbitration Rules, before a single arbitrator, in {city}. [Judgment on the award may be"
      " entered in any court of competent jurisdiction.|Each party shall bear its own costs.]",
      "The parties shall first attempt in good faith to resolve any dispute through "
      "negotiation between senior executives for a period of {days} days before commencing "
      "mediation or litigation."],
     ["Disputes go to private arbitration with one arbitrator in {city} instead of a court, and"
      " the decision is final.",
      "Before suing, the parties must try to settle the dispute by talking for {days_n} days."]),
    ("Non-Solicitation",
     ["During the term of this Agreement and for {months} months thereafter, the {b_role} shall "
      "not, directly or indirectly, solicit or hire any employee of the {a_role} with whom the "
      "{b_role} had contact in connection with this Agreement."],
     ["For {months} months after the contract ends, the {b_role} cannot try to hire away the "
      "{a_role}'s employees it worked with."]),
    ("Entire Agreement",
     ["This Agreement constitutes the entire agreement between the parties with respect to its"
      " subject matter and supersedes all prior and contemporaneous agreements, proposals and "
      "representations, whether written or oral. This Agreement may be amended only by a "
      "written instrument signed by both parties."],
     ["This document is the whole deal: earlier promises do not count, and changes must be in "
      "writing and signed by both sides."]),
    ("Security Deposit",
     ["Upon execution of this Lease, the Tenant shall deposit with the Landlord the sum of "
      "{deposit} as security for the performance of the Tenant's obligations. The Landlord "
      "shall return the deposit, less any lawful deductions itemized in writing, within {days}"
      " days after the Tenant vacates the premises."],
     ["The tenant pays a {deposit} deposit, and the landlord must return it, minus listed "
      "deductions for damage or unpaid rent, within {days_n} days after move-out."]),
]

_CASES = [
    ("breach of contract",
     "{pl} agreed to deliver {goods} to {df} by {month_name}, but delivered {weeks_late} weeks "
     "late. {df} refused to pay, and {pl} sued for the contract price of {amount}.",
     ["whether the late delivery was a material breach",
      "whether {df} waived the delivery date by accepting partial shipments"],
     ["the delay was not material because the contract did not make time of the essence, so "
      "{df} owed the price less its proven damages",
      "the delay was a material breach because the contract stated that time was of the "
      "essence, so {df} was entitled to reject the goods"]),
    ("negligence",
     "{pl} slipped on a wet floor in a store operated by {df} and broke a wrist. There was no "
     "warning sign, and an employee had mopped the area about {minutes} minutes earlier.",
     ["whether {df} breached its duty of care to customers",
      "whether {pl}'s own inattention reduced the recovery"],
     ["{df} breached its duty by failing to warn of a hazard it created, but {pl} was {pct}% "
      "at fault, so damages were reduced by {pct}%",
      "the store owed customers a duty to keep the floor reasonably safe and breached it by "
      "leaving the floor wet without a sign"]),
    ("wrongful termination",
     "{pl} was fired by {df} {days_after} days after reporting safety violations to a state "
     "agency. {df} said the employment was at will.",
     ["whether the public policy exception to at-will employment applied"],
     ["firing an employee for reporting safety violations to the government violates public "
      "policy, even in an at-will relationship",
      "{pl} did not show that the report caused the firing, because the performance problems "
      "were documented before the report"]),
    ("return of a security deposit",
     "{pl} rented an apartment from {df} and paid a deposit of {deposit}. After {pl} moved "
     "out, {df} kept the entire deposit without sending an itemized list of deductions.",
     ["whether the landlord forfeited the right to withhold the deposit"],
     ["the landlord forfeited any deductions by failing to provide an itemized statement "
      "within the statutory period, and {pl} was awarded twice the deposit",
      "the landlord could keep only the cost of repairing damage beyond normal wear and tear"]),
    ("enforceability of a non-compete",
     "{pl}, a sales manager, signed an agreement with {df} not to work for a competitor "
     "anywhere in the country for {years} years after leaving. {pl} joined a competitor in "
     "another state.",
     ["whether the non-compete covenant was reasonable in scope and duration"],
     ["a nationwide ban for {years} years was broader than needed to protect {df}'s "
      "legitimate interests, so the covenant was unenforceable",
      "the court narrowed the covenant to the manager's former sales territory and enforced it"
      " as modified"]),
    ("misrepresentation in a home sale",
     "{pl} bought a house from {df}. The seller's disclosure form said the basement had never "
     "flooded, but neighbors testified that it flooded every spring.",
     ["whether the seller made a fraudulent misrepresentation"],
     ["the seller knowingly made a false statement on the disclosure form that the buyer "
      "relied on, so the buyer could recover the cost of repairs",
      "the buyer could not rely on the statement because the inspection report had flagged "
      "water damage"]),
    ("trademark infringement",
     "{pl} has sold outdoor gear under the name {mark} since {since}. {df} began selling "
     "backpacks under a similar name with a similar logo.",
     ["whether the similar name was likely to confuse consumers"],
     ["the names, logos and products were similar enough that confusion was likely, so an "
      "injunction was proper",
      "the marks were used for different goods in different channels, so confusion was "
      "unlikely"]),
    ("insurance coverage",
     "{pl}'s warehouse was damaged when a pipe burst during a freeze. {df}, the insurer, denied "
     "the claim under an exclusion for water damage.",
     ["whether the water damage exclusion applied to a burst pipe"],
     ["the exclusion was ambiguous and had to be read against the insurer, so the loss was "
      "covered",
      "the exclusion plainly covered water escaping from plumbing, so the denial was proper"]),
]
_GOODS = _w("500 custom steel brackets;a shipment of office furniture;two refrigerated trucks;"
            "10,000 printed catalogs;industrial packaging equipment;a batch of medical gloves")
_COURTS = ["the Court of Appeals", "the {state} Supreme Court", "the district court",
           "the trial court", "the Court of Appeals for the {circuit} Circuit"]

_LAW_QA = [
    ("My landlord kept my whole security deposit and did not give me a list of deductions. "
     "What can I do?",
     "[In many states|Generally], a landlord must return the deposit or send an itemized list "
     "of deductions within a set period after you move out, often {days_n} days. [Send a "
     "written demand letter asking for the deposit back.|Start with a written demand.] If the "
     "landlord does not respond, you can file in small claims court, and some states allow "
     "double or triple damages."),
    ("My employer has not paid my final paycheck. Is that legal?",
     "[Most states|Many states] require employers to pay final wages by a deadline, sometimes "
     "on the last day of work and sometimes by the next regular payday. [You can file a wage "
     "claim with the state labor department.|A wage claim with your state labor agency is "
     "free.] Keep copies of your pay stubs and any messages about your final pay."),
    ("I signed a contract last week and changed my mind. Can I cancel it?",
     "[Usually a signed contract is binding,|In general, you cannot cancel a contract just "
     "because you changed your mind,] unless the contract itself allows cancellation or a "
     "law gives you a cooling-off period. [Some door-to-door and certain consumer sales have a"
     " three-day right to cancel.|The federal cooling-off rule covers some sales made at your "
     "home.] Read the termination section of your contract."),
    ("I was served with a lawsuit. How long do I have to respond?",
     "[The deadline depends on the court and the state, but it is often 20 to 30 days.|You "
     "usually have about 20 to 30 days, depending on the court.] [The summons should state the "
     "deadline.|Check the summons for the exact date.] If you miss it, the court may enter a "
     "default judgment against you, so consider contacting an attorney right away."),
    ("My neighbor's tree fell on my fence. Who pays for the repair?",
     "[It depends on whether the tree was healthy.|Liability usually turns on negligence.] If "
     "a healthy tree fell in a storm, it is often treated as an act of nature and your own "
     "homeowner's insurance may cover the fence. If the neighbor knew the tree was dead or "
     "dying and did nothing, the neighbor may be liable."),
    ("I signed a non-compete with my old employer. Can I work for a competitor?",
     "[It depends on your state.|Enforceability varies by state.] Some states, such as "
     "California, generally do not enforce non-competes, while others enforce them if they are "
     "reasonable in time, geography and scope. [Have an employment lawyer review the exact "
     "language.|Bring the agreement to an employment attorney before you accept the offer.]"),
    ("Another driver hit my car. How do I get my repairs paid?",
     "[File a claim with the other driver's insurance company|You can make a claim against "
     "the at-fault driver's insurer] and provide the police report, photos and repair "
     "estimates. [If they deny the claim, your own collision coverage may pay and then seek "
     "reimbursement.|Your own insurer may also help if you have collision coverage.] "
     "[Deadlines to sue, called statutes of limitations, are often two or three years.|]"),
    ("Can I use photos I found online on my business website?",
     "[Most photos online are protected by copyright|Photos are usually copyrighted] even if "
     "there is no notice. [You need permission from the owner or a license.|Use licensed stock"
     " photos or get written permission.] Using them without permission can lead to a demand "
     "letter or a lawsuit for infringement."),
    ("What makes a will valid?",
     "[In most states|Generally], a will must be in writing, signed by the person making it, "
     "and signed by two adult witnesses who are not beneficiaries. [Some states also accept "
     "handwritten wills without witnesses.|Notarizing a self-proving affidavit can make "
     "probate easier.] The person must be of sound mind when signing."),
    ("What is the limit for small claims court?",
     "[Limits vary by state, commonly from $5,000 to $15,000.|Each state sets its own limit, "
     "often between $5,000 and $15,000.] [You usually do not need a lawyer, and filing fees "
     "are modest.|Small claims court is designed for people without lawyers.] Bring "
     "documents, photos and any witnesses to the hearing."),
]


def _company(rng: random.Random) -> str:
    return f"{rng.choice(_CO_A)} {rng.choice(_CO_B)} {rng.choice(_CO_C)}"


def _law_bind(rng: random.Random) -> dict[str, Slot]:
    ag, a_role, b_role = rng.choice(_AGREEMENTS)
    p1, p2 = person(rng), person(rng)
    days = rng.choice([10, 15, 30, 45, 60, 90])
    cure = rng.choice([10, 15, 30])
    months = rng.choice([12, 24])
    years = rng.choice([1, 2, 3, 5])
    pl = p1["full"] if rng.random() < 0.5 else _company(rng)
    df = _company(rng) if rng.random() < 0.7 else p2["full"]
    return {
        **p1, "agreement": ag, "a_role": a_role, "b_role": b_role, "A_ROLE": a_role.upper(),
        "party_a": _company(rng), "party_b": _company(rng) if rng.random() < 0.6 else
        p2["full"], "state": rng.choice(_STATES), "days": _nw(days), "days_n": str(days),
        "cure": _nw(cure), "cure_n": str(cure), "months": _nw(months), "years": _nw(years),
        "cap": money(rng.choice([50, 100, 250, 500, 1000]) * 1000, cents=False),
        "late": rng.choice(["1", "1.5", "2"]), "rent": money(rng.randint(9, 60) * 100, False),
        "latefee": money(rng.choice([50, 75, 100]), False),
        "grace": rng.choice(["fifth", "third", "tenth"]),
        "deposit": money(rng.randint(8, 40) * 100, False),
        "city": rng.choice(_w("Wilmington, Delaware;New York, New York;Chicago, Illinois;"
                              "Austin, Texas;Seattle, Washington;Boston, Massachusetts;Denver, "
                              "Colorado;Atlanta, Georgia")),
        "eff": date(rng, style=0), "sec": f"{rng.randint(2, 18)}.{rng.randint(1, 6)}",
        "pl": pl, "df": df, "goods": rng.choice(_GOODS), "month_name": rng.choice(MONTHS),
        "weeks_late": str(rng.randint(2, 9)), "amount": money(rng.randint(20, 900) * 1000,
                                                                False),
        "minutes": str(rng.randint(5, 40)), "pct": str(rng.choice([10, 20, 25, 30, 40])),
        "days_after": str(rng.randint(3, 30)), "since": str(rng.randint(1985, 2015)),
        "mark": rng.choice(_w("Trailhead;Summit Peak;Ridgeback;Northface Pass;Timberline")),
        "year": str(rng.randint(1998, 2024)), "circuit": rng.choice(_w(
            "First;Second;Third;Fifth;Seventh;Ninth;Tenth")),
        "court": rng.choice(_COURTS), "judge": "Judge " + rng.choice(LAST),
        "disclaimer": ["This is general information, not legal advice[ for your situation|].",
                       "For advice about your situation, consult a licensed attorney in "
                       "{state}.", "Laws vary by state, so check the rules in {state}."],
    }


def _law_clause(rng: random.Random) -> Example:
    b = _law_bind(rng)
    head, formal, _ = rng.choice(_CLAUSES)
    b["body"] = rng.choice(formal)
    t = ("[{sec} {head}.|Section {sec}. {head}.|{HEAD}.|{head}.] {body}"
         "[|| (From the {agreement} between {party_a} and {party_b}[, dated {eff}|].)"
         "|\nSource: {agreement}, {party_a} and {party_b}.]")
    return {"text": expand(t, rng, {**b, "head": head, "HEAD": head.upper()})}


def _law_contract_open(rng: random.Random) -> Example:
    b = _law_bind(rng)
    head, formal, _ = rng.choice(_CLAUSES)
    b["body"] = rng.choice(formal)
    t = ("This {agreement} (the \"Agreement\") is entered into as of {eff} (the \"Effective "
         "Date\") by and between {party_a} (the \"{a_role}\") and {party_b} (the \"{b_role}\")"
         ". [The parties agree as follows:|NOW, THEREFORE, the parties agree as follows:]\n"
         "1. {head}. {body}")
    return {"text": expand(t, rng, {**b, "head": head})}


def _law_case(rng: random.Random) -> Example:
    b = _law_bind(rng)
    claim, facts, issues, holdings = rng.choice(_CASES)
    b.update({"claim": claim, "facts": facts, "issue": issues, "holding": holdings})
    t = ("[Case summary|Case brief|Summary]: [{pl} v. {df}|In {pl} v. {df}], {court} ({year}). "
         "[Facts: |]{facts} [Issue: {^issue}.|The question was {issue}.] [Holding: the court "
         "held that {holding}.|The court held that {holding}.|Held: {holding}.] "
         "[The judgment was [affirmed|reversed and remanded|affirmed in part and reversed in "
         "part].|The case was remanded for a new trial on damages.|]")
    return {"text": expand(t, rng, b)}


def _law_qa(rng: random.Random) -> Example:
    b = _law_bind(rng)
    q, a = rng.choice(_LAW_QA)
    return {"prompt": expand("[Question: |Legal question: |Q: |]" + q + "[ I live in {state}.|]",
                             rng, b),
            "response": expand("[Answer: |A: |]" + a + " {disclaimer}", rng, b)}


def _law_qa_text(rng: random.Random) -> Example:
    b = _law_bind(rng)
    q, a = rng.choice(_LAW_QA)
    return {"text": expand("[Legal FAQ|Know your rights|Plain-language legal guide]: " + q +
                           "\n" + a + " {disclaimer}", rng, b)}


def _law_pr_explain(rng: random.Random) -> Example:
    b = _law_bind(rng)
    head, formal, plain = rng.choice(_CLAUSES)
    i = rng.randrange(len(formal))
    b["body"] = formal[i]
    b["plain_body"] = plain[min(i, len(plain) - 1)]
    return {"prompt": expand("[Explain this clause in plain English|What does this {head} "
                             "clause mean|Summarize this clause]: {body}", rng,
                             {**b, "head": head.lower()}),
            "response": expand("[In plain English: |This means: |]{plain_body} [This is a "
                               "standard {head} clause.|]", rng, {**b, "head": head.lower()})}


def _law_pr_draft(rng: random.Random) -> Example:
    b = _law_bind(rng)
    head, formal, _ = rng.choice(_CLAUSES)
    b["body"] = rng.choice(formal)
    return {"prompt": expand("[Draft a|Write a|Provide a sample] {head} clause for a "
                             "{agreement} between {party_a} and {party_b}.", rng,
                             {**b, "head": head.lower()}),
            "response": expand("{head}. {body}", rng, {**b, "head": head})}


def _law_pr_case(rng: random.Random) -> Example:
    b = _law_bind(rng)
    claim, facts, issues, holdings = rng.choice(_CASES)
    b.update({"claim": claim, "facts": facts, "issue": issues, "holding": holdings})
    return {"prompt": expand("[Summarize the holding|What did the court decide|Brief this "
                             "case]: {pl} v. {df} ({year}), a case about {claim}. {facts}",
                             rng, b),
            "response": expand("[The court held that|Holding:|The court concluded that] "
                               "{holding}. [The key issue was {issue}.|]", rng, b)}


_LAW_KINDS = [
    (4.0, _law_clause), (1.5, _law_contract_open), (3.0, _law_case), (1.5, _law_qa_text),
    (3.0, _law_qa), (2.0, _law_pr_explain), (1.0, _law_pr_draft), (1.5, _law_pr_case),
]

SITE_GENERATORS: dict[str, list[tuple[float, Callable[[random.Random], Example]]]] = {
    "clinic": _CLINIC_KINDS,
    "bank": _BANK_KINDS,
    "law": _LAW_KINDS,
}


def generate_site(site: str, n: int, seed: int = SEED, style_bias: float = 0.6) -> list[Example]:
    """Generate ``n`` distinct examples for one site, deterministically.

    Parameters
    ----------
    site : str
        One of :data:`SITES`.
    n : int
        Number of examples.
    seed : int
        Base seed; each site derives its own stream from it.

    Returns
    -------
    list[Example]
        Examples as ``{"text": ...}`` or ``{"prompt": ..., "response": ...}`` dicts.
    """
    if site not in SITE_GENERATORS:
        raise ValueError(f"`site` must be one of {sorted(SITE_GENERATORS)}, got {site!r}")
    if type(n) is not int or n <= 0:
        raise ValueError(f"`n` must be a positive int, got {n!r}")
    # `style_bias` is documented at _STYLE_BIAS. It is kept out of this docstring on purpose:
    # simulations.generate.general_corpus draws words from this module's string constants, so
    # new words in any string here would change the committed general corpus.
    rng = random.Random(f"{seed}:{site}")
    kinds = SITE_GENERATORS[site]
    _STYLE_BIAS[0] = style_bias
    weights = [w for w, _ in kinds]
    seen: set[str] = set()
    out: list[Example] = []
    tries = 0
    while len(out) < n:
        tries += 1
        if tries > 50 * n:
            raise RuntimeError(f"could not generate {n} distinct examples for {site!r}")
        _, gen = rng.choices(kinds, weights=weights)[0]
        ex = {k: tidy(v) for k, v in gen(rng).items()}
        key = "\n".join(ex.values())
        if not MIN_WORDS <= len(words(key)) <= MAX_WORDS or key in seen:
            continue
        seen.add(key)
        out.append(ex)
    _STYLE_BIAS[0] = 0.0
    return out


def write_sites(out_dir: Path, n: int = 3000, seed: int = SEED) -> dict[str, Path]:
    """Write ``<out_dir>/<site>/train.jsonl`` for every site and return the paths."""
    paths: dict[str, Path] = {}
    for site in SITES:
        examples = generate_site(site, n, seed)
        path = out_dir / site / "train.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", encoding="utf-8", newline="\n") as f:
            for ex in examples:
                f.write(json.dumps(ex, ensure_ascii=False) + "\n")
        n_pr = sum("prompt" in ex for ex in examples)
        logger.info("%s: %d examples (%d prompt/response) -> %s (%d bytes)",
                    site, len(examples), n_pr, path, path.stat().st_size)
        paths[site] = path
    return paths


def main(argv: Sequence[str] | None = None) -> None:
    """Command-line entry point."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("simulations/data/sites"))
    p.add_argument("--n", type=int, default=3000, help="examples per site")
    p.add_argument("--seed", type=int, default=SEED)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    write_sites(args.out, args.n, args.seed)


if __name__ == "__main__":
    main()
