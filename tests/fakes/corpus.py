"""Names, subjects and words for ``populate()``: plausible mail, generated fast and reproducibly."""

PEOPLE = [
    ("Ada Lovelace", "ada@analytical.example"),
    ("Grace Hopper", "grace@navy.example"),
    ("Alan Turing", "alan@bletchley.example"),
    ("Katherine Johnson", "katherine@nasa.example"),
    ("Linus Torvalds", "linus@kernel.example"),
    ("Margaret Hamilton", "margaret@apollo.example"),
    ("GitHub", "noreply@github.example"),
    ("Calendar", "calendar-notification@google.example"),
    ("Newsletter", "news@weekly.example"),
    ("Bank", "alerts@bank.example"),
]
SUBJECTS = [
    "Quarterly report #{n}",
    "Lunch on Thursday?",
    "Invitation: planning sync",
    "Your order #{n} has shipped",
    "[brain] Pull request #{n}",
    "Weekly digest {n}",
    "Re: travel plans",
    "Invoice {n} is ready",
    "Security alert",
    "Photos from the weekend",
]
WORDS = (
    "the meeting notes attached please review budget draft schedule tomorrow thanks regards project "
    "update deadline friday call agenda question follow up invoice payment design release build test "
    "team weekend trip photos dinner recipe garden book chapter idea plan"
).split()
GMAIL_CATEGORIES = ["CATEGORY_PERSONAL", "CATEGORY_UPDATES", "CATEGORY_PROMOTIONS", "CATEGORY_SOCIAL"]
