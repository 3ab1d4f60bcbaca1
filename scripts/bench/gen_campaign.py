#!/usr/bin/env python3
"""Writes the delivery benchmark's campaign and recipients.

campaign.json: a ~8 KB HTML template (40 paragraphs) and a ~2.3 KB text template, each
paragraph personalized with first_name, city and genre, plus the unsubscribe link; tracking on
(the defaults), batch_size 500. Rendered and built, one message is ~10.3 KB, the size
smtp-source sends with `-l 10240`.

recipients.csv: `email,first_name,city,genre`, N rows, unique addresses, deterministic (the
same N gives the same file), ASCII only so both parts stay 7bit as in the smtp-source
comparison.

Usage: gen_campaign.py --recipients N --campaign PATH --csv PATH
"""

import argparse
import json
import sys

PARAGRAPHS = 40

FIRST_NAMES = [
    "Ada", "Bruno", "Chloe", "Dmitri", "Elena", "Farid", "Grace", "Hugo", "Ines", "Jonas",
    "Keiko", "Liam", "Maya", "Noah", "Olga", "Pablo", "Quinn", "Rosa", "Sami", "Tove",
]
CITIES = [
    "Lisbon", "Oslo", "Leeds", "Lyon", "Gdansk", "Porto", "Ghent", "Turku", "Bilbao", "Graz",
    "Malmo", "Cork", "Utrecht", "Brno", "Bergen",
]
GENRES = [
    "crime", "poetry", "history", "science fiction", "travel writing", "biography",
    "cookery", "philosophy", "graphic novels", "nature writing", "thrillers",
]


def campaign() -> dict:
    paragraph = (
        "<p>Dear {{ first_name }}, this month in {{ city }} our booksellers picked stories for "
        "every taste: crime, poetry, history and more. Come by the shop for a warm drink and a "
        "chat about {{ genre }}.</p>\n"
    )
    html = (
        "<html><body><h1>Hello {{ first_name }}</h1>\n"
        + paragraph * PARAGRAPHS
        + '<p><a href="{{ unsubscribe_url }}">Unsubscribe</a></p></body></html>'
    )
    line = "This month in {{ city }} our booksellers picked stories about {{ genre }}.\n"
    text = "Hello {{ first_name }},\n" + line * 30 + "Unsubscribe: {{ unsubscribe_url }}\n"
    return {
        "name": "Benchmark",
        "from": {"email": "news@bench.example", "name": "Bench"},
        "templates": {
            "subject": "{{ first_name }}, your {{ city }} reading list",
            "html": html,
            "text": text,
        },
        "batch_size": 500,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipients", type=int, required=True)
    parser.add_argument("--campaign", required=True)
    parser.add_argument("--csv", required=True)
    args = parser.parse_args()
    if args.recipients < 1:
        parser.error("--recipients must be at least 1")

    with open(args.campaign, "w", encoding="utf-8") as out:
        json.dump(campaign(), out, indent=1)
        out.write("\n")

    with open(args.csv, "w", encoding="ascii", newline="") as out:
        write = out.write
        write("email,first_name,city,genre\n")
        chunk = []
        for i in range(args.recipients):
            chunk.append(
                f"reader{i}@bench{i % 97}.example,"
                f"{FIRST_NAMES[i % len(FIRST_NAMES)]},"
                f"{CITIES[i % len(CITIES)]},"
                f"{GENRES[i % len(GENRES)]}\n"
            )
            if len(chunk) == 10_000:
                write("".join(chunk))
                chunk.clear()
        write("".join(chunk))
    return 0


if __name__ == "__main__":
    sys.exit(main())
