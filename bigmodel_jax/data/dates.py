"""An offline parallel corpus: dates written the many ways people write them -> ISO 8601.

  "3rd of March 2021", "Mar 3, '21", "03/03/2021", "Wednesday, March 3, 2021", "2021.03.03"
      -> "2021-03-03"

Every source has exactly one reading, fixed by its form (the conventions are the usual ones):

  name             example (2021-03-03)          reading
  iso              2021-03-03                    Y-M-D
  us_slash         03/03/2021                    M/D/Y (US: month first after a slash)
  us_slash_short   3/3/21                        M/D/YY
  eu_dot           03.03.2021                    D.M.Y (European: day first after a dot)
  eu_dot_short     3.3.21                        D.M.YY
  ymd_dot          2021.03.03                    Y.M.D (a 4-digit first field is the year)
  ymd_slash        2021/03/03                    Y/M/D
  compact          20210303                      YYYYMMDD
  day_month        3 March 2021
  month_day        March 3, 2021
  ordinal_of       3rd of March 2021
  the_ordinal_of   the 3rd of March, 2021
  month_ordinal    March 3rd, 2021
  abbr_apostrophe  Mar 3, '21                    ('YY: two-digit year)
  abbr_dot         Mar. 3, 2021
  weekday_long     Wednesday, March 3, 2021      (the weekday is always the true one)
  weekday_short    Wed 3 Mar 2021
  rfc2822          Wed, 03 Mar 2021
  dash_abbr        03-Mar-2021
  day_abbr         3 Mar 2021
  upper_abbr       3 MAR 2021
  lower_ordinal    march 3rd 2021
  year_first_words 2021 March 3

Two-digit years follow POSIX/Python `strptime("%y")`: 69-99 -> 19xx, 00-68 -> 20xx, and dates are
drawn uniformly from 1969-01-01 .. 2068-12-31, so a two-digit year is never ambiguous. `parse` is an
independent reference parser (it shares no code with the renderers) that the tests check every
generated source against.
"""

from collections.abc import Callable
import datetime
import re

import numpy as np

FIRST_DATE = datetime.date(1969, 1, 1)
LAST_DATE = datetime.date(2068, 12, 31)
MONTHS = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)
WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


def ordinal(n: int) -> str:
  suffix = "th" if 11 <= n % 100 <= 13 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
  return f"{n}{suffix}"


def _month(d) -> str:
  return MONTHS[d.month - 1]


def _mon(d) -> str:
  return MONTHS[d.month - 1][:3]


def _wd(d) -> str:
  return WEEKDAYS[d.weekday()]


def _yy(d) -> str:
  return f"{d.year % 100:02d}"


FORMATS: dict[str, Callable[[datetime.date], str]] = {
    "iso": lambda d: f"{d.year:04d}-{d.month:02d}-{d.day:02d}",
    "us_slash": lambda d: f"{d.month:02d}/{d.day:02d}/{d.year}",
    "us_slash_short": lambda d: f"{d.month}/{d.day}/{_yy(d)}",
    "eu_dot": lambda d: f"{d.day:02d}.{d.month:02d}.{d.year}",
    "eu_dot_short": lambda d: f"{d.day}.{d.month}.{_yy(d)}",
    "ymd_dot": lambda d: f"{d.year}.{d.month:02d}.{d.day:02d}",
    "ymd_slash": lambda d: f"{d.year}/{d.month:02d}/{d.day:02d}",
    "compact": lambda d: f"{d.year}{d.month:02d}{d.day:02d}",
    "day_month": lambda d: f"{d.day} {_month(d)} {d.year}",
    "month_day": lambda d: f"{_month(d)} {d.day}, {d.year}",
    "ordinal_of": lambda d: f"{ordinal(d.day)} of {_month(d)} {d.year}",
    "the_ordinal_of": lambda d: f"the {ordinal(d.day)} of {_month(d)}, {d.year}",
    "month_ordinal": lambda d: f"{_month(d)} {ordinal(d.day)}, {d.year}",
    "abbr_apostrophe": lambda d: f"{_mon(d)} {d.day}, '{_yy(d)}",
    "abbr_dot": lambda d: f"{_mon(d)}. {d.day}, {d.year}",
    "weekday_long": lambda d: f"{_wd(d)}, {_month(d)} {d.day}, {d.year}",
    "weekday_short": lambda d: f"{_wd(d)[:3]} {d.day} {_mon(d)} {d.year}",
    "rfc2822": lambda d: f"{_wd(d)[:3]}, {d.day:02d} {_mon(d)} {d.year}",
    "dash_abbr": lambda d: f"{d.day:02d}-{_mon(d)}-{d.year}",
    "day_abbr": lambda d: f"{d.day} {_mon(d)} {d.year}",
    "upper_abbr": lambda d: f"{d.day} {_mon(d).upper()} {d.year}",
    "lower_ordinal": lambda d: f"{_month(d).lower()} {ordinal(d.day)} {d.year}",
    "year_first_words": lambda d: f"{d.year} {_month(d)} {d.day}",
}


def generate(n: int, seed: int) -> tuple[list[str], list[str], list[str]]:
  """n (source, ISO target, format name) triples; dates and formats uniform, fixed by seed."""
  rng = np.random.default_rng(seed)
  span = (LAST_DATE - FIRST_DATE).days + 1
  days = rng.integers(0, span, n)
  names = list(FORMATS)
  formats = [names[i] for i in rng.integers(0, len(names), n)]
  dates = [FIRST_DATE + datetime.timedelta(days=int(k)) for k in days]
  return ([FORMATS[f](d) for f, d in zip(formats, dates)], [d.isoformat() for d in dates], formats)


def make_splits(train: int, eval_: int, seed: int) -> dict[str, tuple[list[str], list[str]]]:
  """{"train", "validation", "test"}: (sources, targets), each split from its own seed.

  validation and test draw from seeds seed+1 and seed+2 and skip any source that is in the
  training split, so they measure generalisation to unseen strings.
  """
  src, tgt, _ = generate(train, seed)
  seen = set(src)
  out = {"train": (src, tgt)}
  for offset, split in ((1, "validation"), (2, "test")):
    s, t, _ = generate(2 * eval_ + 100, seed + offset)
    keep = [i for i, x in enumerate(s) if x not in seen][:eval_]
    out[split] = ([s[i] for i in keep], [t[i] for i in keep])
  return out


# --- reference parser -----------------------------------------------------------------------

_MONTH_WORDS = {m.lower(): i + 1 for i, m in enumerate(MONTHS)}
_MONTH_WORDS.update({m[:3].lower(): i + 1 for i, m in enumerate(MONTHS)})
_WEEKDAY_WORDS = {w.lower(): i for i, w in enumerate(WEEKDAYS)}
_WEEKDAY_WORDS.update({w[:3].lower(): i for i, w in enumerate(WEEKDAYS)})
_NUMERIC = (  # (pattern, order of the groups)
    (r"(\d{4})-(\d{2})-(\d{2})", "ymd"),
    (r"(\d{4})([./])(\d{2})\2(\d{2})", "y.md"),
    (r"(\d{4})(\d{2})(\d{2})", "ymd"),
    (r"(\d{1,2})/(\d{1,2})/(\d{2}|\d{4})", "mdy"),
    (r"(\d{1,2})\.(\d{1,2})\.(\d{2}|\d{4})", "dmy"),
)


def _year(text: str) -> int:
  y = int(text)
  if len(text) == 2:
    return y + (1900 if y >= 69 else 2000)
  return y


def parse(text: str) -> datetime.date:
  """Reads any form the generator writes (and nothing ambiguous); raises ValueError otherwise."""
  s = text.strip()
  for pattern, order in _NUMERIC:
    if m := re.fullmatch(pattern, s):
      g = [x for x in m.groups() if x not in "./"]
      fields = dict(zip(order.replace(".", ""), g))
      return datetime.date(_year(fields["y"]), int(fields["m"]), int(fields["d"]))
  words = re.findall(r"'\d{2}|[a-z]+|\d+(?:st|nd|rd|th)?", s.lower().replace("-", " "))
  month = weekday = year = day = None
  for w in words:
    if w in ("the", "of"):
      continue
    if w in _MONTH_WORDS and month is None:
      month = _MONTH_WORDS[w]
    elif w in _WEEKDAY_WORDS and weekday is None:
      weekday = _WEEKDAY_WORDS[w]
    elif w.startswith("'") or len(w) == 4 and w.isdigit():
      year = _year(w.lstrip("'"))
    elif m := re.fullmatch(r"(\d{1,2})(st|nd|rd|th)?", w):
      if day is not None or m.group(2) and ordinal(int(m.group(1))) != w:
        raise ValueError(f"not a date: {text!r}")
      day = int(m.group(1))
    else:
      raise ValueError(f"not a date: {text!r} ({w!r})")
  if None in (month, year, day):
    raise ValueError(f"not a date: {text!r}")
  date = datetime.date(year, month, day)
  if weekday is not None and date.weekday() != weekday:
    raise ValueError(f"{text!r}: {date} is not a {WEEKDAYS[weekday]}")
  return date
