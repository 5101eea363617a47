"""The fixed corpus of the relevance tests (tests/test_search.py): one person's notes and mail.

Every event carries the same created_at, so the recency factor is alike for all and the order
is BM25's alone. `RELEVANCE` holds 20 queries with the three events a person would expect on
top, best first, each event named by its `key`.
"""

from __future__ import annotations

from typing import Any

CREATED_AT = "2025-03-01T12:00:00Z"


def _mail(key: str, subject: str, sender: tuple[str, str], body: str, *, to: tuple[str, str] = ("Me", "me@home.example"),
          labels: tuple[str, ...] = ("INBOX",), attachments: tuple[str, ...] = (), account: str = "acc_personal") -> dict[str, Any]:
    return {
        "key": key,
        "type": "mail.message.received",
        "data": {
            "account": account, "provider": "gmail", "address": "me@home.example",
            "message_id": f"msg-{key}", "thread_id": f"thr-{key}", "internet_message_id": f"<{key}@mail.example>",
            "in_reply_to": None, "references": [],
            "from": {"name": sender[0], "address": sender[1]},
            "to": [{"name": to[0], "address": to[1]}], "cc": [], "bcc": [], "reply_to": [],
            "subject": subject, "date": CREATED_AT, "direction": "received", "folders": [], "labels": list(labels),
            "flags": {"read": False, "starred": False, "important": False}, "size": 2000,
            "snippet": body[:200], "body_text": body, "body_text_clean": body,
            "attachments": [{"id": f"att-{key}-{i}", "filename": name, "mime_type": "application/pdf", "size": 1000,
                             "content_id": None, "inline": False} for i, name in enumerate(attachments)],
            "has_attachments": bool(attachments), "truncated": False,
        },
    }


def _note(key: str, title: str, text: str, **extra: Any) -> dict[str, Any]:
    return {"key": key, "type": "note.created", "data": {"title": title, "text": text, **extra}}


ANNA = ("Anna Müller", "anna.mueller@example.com")
BOB = ("Bob Stone", "bob@stone.example")
LANDLORD = ("Greenfield Property Management", "office@greenfield.example")
AIRLINE = ("SkyJet Airlines", "noreply@skyjet.example")
BOSS = ("Carla Diaz", "carla.diaz@work.example")

CORPUS: list[dict[str, Any]] = [
    # The flat and its lease.
    _note("lease-note", "Lease renewal", "The lease on the flat ends in June; ask about renewing for two more years."),
    _mail("lease-mail", "Your lease agreement for renewal", LANDLORD,
          "Dear tenant, attached is the lease agreement for the renewal of your lease. Please sign the lease "
          "agreement and return it by May 15.", attachments=("lease-agreement.pdf",)),
    _mail("anna-lease", "Re: the flat", ANNA,
          "Hi! I talked to the landlord about the lease. He says the rent goes up by 3 percent if we renew. "
          "Let's discuss the budget on Sunday. Anna"),
    _note("rent-note", "Rent increase", "Greenfield wants 3 percent more rent from July. Compare with other flats."),
    _mail("landlord-heating", "Heating maintenance on Tuesday", LANDLORD,
          "The heating in your building will be serviced on Tuesday morning. Please give access to the flat."),
    # Health.
    _note("dentist-note", "Dentist appointment", "Dentist on Thursday at 9, Dr. Okafor, cleaning and a check of the molar."),
    _mail("dentist-mail", "Reminder: dental appointment", ("Smile Dental Clinic", "info@smile.example"),
          "This is a reminder of your dentist appointment on Thursday at 9:00 with Dr. Okafor."),
    _note("pharmacy", "Pharmacy", "Pick up the prescription after the dentist; the pharmacy closes at 6."),
    # Taxes and money.
    _note("tax-note", "Tax return 2024", "Collect receipts for the tax return: donations, the home office, the train pass."),
    _mail("tax-advisor", "Documents for your tax return", ("Ruth Klein", "ruth@klein-tax.example"),
          "Please send me the documents for your tax return before April 30: salary statements and receipts.",
          attachments=("tax-checklist.pdf",)),
    _note("budget-note", "Monthly budget", "Budget for March: rent, groceries, the gym, savings. Anna wants to plan the holiday budget too."),
    _mail("anna-budget", "Holiday budget", ANNA,
          "I made a spreadsheet for the holiday budget. Flights to Rome are cheaper in September. Anna"),
    _mail("invoice-1", "Invoice 2025-031 for March", ("Fiber Net", "billing@fibernet.example"),
          "Your invoice for March is attached. Amount due: 39.90 EUR.", attachments=("invoice-2025-031.pdf",)),
    _mail("invoice-2", "Invoice for your order", ("Bookshop Lumen", "orders@lumen.example"),
          "Thank you for your order of three books. The invoice is below: total 54.20 EUR, paid by card."),
    _note("invoice-note", "Invoices to file", "File the internet invoice and the bookshop invoice in the tax folder."),
    # Travel.
    _mail("flight-booked", "Your flight to Rome is booked", AIRLINE,
          "Booking confirmed: flight SJ 412 from Berlin to Rome on 12 September, seat 14C.",
          attachments=("boarding-pass.pdf",)),
    _mail("flight-cancelled", "Flight cancelled: SJ 988 to Paris", AIRLINE,
          "We regret that your flight SJ 988 to Paris on 3 May was cancelled. You can rebook or ask for a refund."),
    _note("paris-trip", "Paris weekend", "Museums in Paris: the Orsay on Saturday, a café in Montmartre, the flight back on Sunday."),
    _note("rome-trip", "Rome in September", "Rome with Anna: the Forum, Trastevere, a cooking class. Hotel near Campo de' Fiori."),
    _note("packing", "Packing list", "Passport, chargers, adapter, sunscreen, the camera."),
    # Work.
    _mail("apollo-deadline", "Project Apollo: deadline moved", BOSS,
          "The Project Apollo deadline moves to Friday, 14 March. Please update the launch plan.",
          labels=("INBOX", "Work"), account="acc_work", to=("Me", "me@work.example")),
    _mail("apollo-review", "Apollo design review", BOSS,
          "Agenda for the Apollo design review: architecture, risks, the deadline and staffing.",
          labels=("Work",), account="acc_work", to=("Me", "me@work.example")),
    _note("apollo-note", "Project Apollo", "Launch checklist for Project Apollo; the deadline is tight, talk to Carla."),
    _mail("work-offsite", "Team offsite in April", BOSS, "We plan a team offsite in April near the lake. Dinner on the first evening.",
          labels=("Work",), account="acc_work", to=("Me", "me@work.example")),
    _mail("newsletter", "Weekly digest", ("Tech Weekly", "digest@techweekly.example"),
          "This week: databases, search engines, a deadline for conference talks, and a recipe for productivity."),
    # Food and home.
    _note("sourdough", "Sourdough recipe", "Sourdough: 500 g flour, 350 g water, 100 g starter, 10 g salt. Bake at 250 degrees."),
    _note("recipes", "Recipes to try", "Lentil soup, a sourdough focaccia, the lemon cake recipe from Bob."),
    _mail("bob-recipe", "The lemon cake recipe", BOB, "As promised, my lemon cake recipe: butter, sugar, eggs, flour, two lemons."),
    _note("kitchen", "Kitchen renovation", "Kitchen renovation quotes: new cabinets, the sink, tiles. The landlord must agree."),
    _mail("kitchen-quote", "Quote for your kitchen", ("Hammer & Sons", "quotes@hammer.example"),
          "Our quote for the kitchen renovation: cabinets 4,200 EUR, worktop 900 EUR, fitting two days.",
          attachments=("kitchen-quote.pdf",)),
    _note("cafe", "Café Linde", "Café Linde on the corner makes the best cinnamon rolls; open Sunday mornings."),
    # People and dates.
    _note("birthday-anna", "Anna's birthday", "Anna's birthday on 21 April: book the Italian restaurant, order flowers."),
    _mail("bob-birthday", "Birthday party on Saturday", BOB, "I'm turning 40! Birthday party on Saturday at our place, bring nothing but good mood."),
    _mail("anna-dinner", "Dinner on Friday?", ANNA, "Shall we have dinner on Friday at the Italian place? Anna",
          account="acc_personal"),
    _mail("carla-dinner", "Dinner with the team", BOSS, "Team dinner after the offsite, Thursday at 7.",
          labels=("Work",), account="acc_work", to=("Me", "me@work.example")),
    _note("gym", "Gym plan", "Monday and Thursday: strength. Saturday: a long run by the river."),
    _note("books", "Books to read", "The Name of the Rose, a biography of Ada Lovelace, a book about search engines."),
    _note("car", "Car service", "The car needs a service before the trip; tyres and oil."),
    _note("week-plan", "Week plan", "Monday gym, Tuesday the heating check, Wednesday groceries and laundry, Thursday the "
          "dentist appointment in the morning and a call with the bank, Friday dinner with Anna."),
    _note("gift-ideas", "Gift ideas", "For Bob's birthday: a cookbook. For Anna: the scarf from the market, or concert tickets."),
    _note("deadlines", "Deadlines this spring", "Project Apollo launch plan, the lease renewal in May, the tax return by the end "
          "of April, and the conference talk proposal."),
    _mail("anna-weekend", "Weekend plans", ANNA, "Are you free on Saturday? We could go to the market, then cook at home, "
          "and afterwards sit down with the numbers for the budget. Anna"),
    _mail("rebooking", "Your rebooking options", AIRLINE, "Following the disruption you can choose another date free of "
          "charge, ask for a voucher, or take a later flight on the same day. Our service team is happy to help."),
    _note("brunch", "Sunday brunch", "Brunch at the cafe by the river with Bob and his sister."),
    _mail("invoice-3", "Invoice: gym membership", ("City Gym", "billing@citygym.example"),
          "Your gym membership invoice for the year is attached.", attachments=("gym-invoice.pdf",)),
]

# query -> the keys of the three events that belong on top, best first (fewer where fewer match).
RELEVANCE: dict[str, list[str]] = {
    "lease": ["lease-note", "lease-mail", "deadlines"],
    "lease renew*": ["lease-note", "lease-mail", "deadlines"],
    '"lease agreement"': ["lease-mail"],
    "dentist appointment": ["dentist-note", "dentist-mail", "week-plan"],
    "tax return": ["tax-note", "tax-advisor", "deadlines"],
    "from:anna budget": ["anna-budget", "anna-weekend", "anna-lease"],
    "invoice": ["invoice-3", "invoice-1", "invoice-2"],
    "type:mail.* flight": ["flight-cancelled", "flight-booked", "rebooking"],
    "flight -cancelled": ["flight-booked", "paris-trip", "rebooking"],
    "paris OR rome": ["paris-trip", "rome-trip", "flight-cancelled"],
    "recip*": ["recipes", "sourdough", "bob-recipe"],
    "muller": ["anna-dinner", "anna-budget", "anna-weekend"],
    "cafe": ["cafe", "brunch", "paris-trip"],
    "has:attachment invoice": ["invoice-3", "invoice-1"],
    "label:work deadline": ["apollo-deadline", "apollo-review"],
    "account:acc_personal dinner": ["anna-dinner"],
    "kitchen renovation": ["kitchen", "kitchen-quote"],
    '"project apollo" deadline': ["apollo-deadline", "apollo-note"],
    "sourdough": ["sourdough", "recipes"],
    "birthday": ["birthday-anna", "bob-birthday", "gift-ideas"],
}
