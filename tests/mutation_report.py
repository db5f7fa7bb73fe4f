"""Rewrite tests/MUTATION.md from `mutmut results` (run after `mutmut run`): each survivor with
the reason it survives, matched by the rules below (each checked by hand). A survivor no rule
matches is printed and the script fails: it is a missing test, or a new reason to check."""

import re
import subprocess
import sys
from pathlib import Path

REASONS = {
    "nan": '`float("nan")` and `float("NAN")` are the same value: Python reads either.',
    "dtype": "A conversion dropped where the value goes to a library that converts it the same "
    "way (lifelines, scikit-learn, `ndimage.label` counting any non-zero voxel), or where "
    "every caller already passes that type.",
    "warnfilter": "`warnings.filterwarnings` matches its message case-insensitively, and dropping "
    "the message or the category only widens what is silenced inside the call: the "
    "results are equal, and the tests check that nothing warns.",
    "strict": "A `zip(..., strict=True)` made lenient where the lengths are equal by construction "
    "or checked by another strict zip (or an explicit check) in the same function, which "
    "the tests exercise with a wrong length.",
    "shortcut": "An early return or a bin count that the general path computes identically: with "
    "`min_mm3` 0 no lesion is below it; an empty side has no overlap to match; "
    "`np.bincount` sizes itself to the largest label, and an extra empty bin is never "
    "read; the background label 0 is already 0 when 'removed'.",
    "tieorder": "Only the order among candidate pairs of exactly equal IoU (numpy sorts up to 16 "
    "items by insertion, which is stable, and `kind` is case-insensitive). The greedy "
    "match among equal IoUs is left undefined by the challenge; no test can pin it.",
    "coxties": "Tied times: the Breslow risk set holds every tied patient whatever their order "
    "(`test_tie_order_does_not_matter`).",
    "coxshift": "The Cox partial likelihood is unchanged by adding one constant to every risk "
    "(centring only keeps the exponentials in range; `test_shift_invariance`); "
    "`.to(None)` keeps the tensor where it is.",
    "onestd": "One age has a NaN spread and `NaN > 0` is false: the default spread either way.",
    "block": "The block size of a file read does not change its SHA-256.",
    "nanlabel": "`None` and `NaN` are both dropped by `notna()` on the next line.",
    "tiny": "Not equivalent: differs only for a cohort of exactly 2 patients (or exactly "
    "`split.folds`), where the split is degenerate anyway; the test cohorts have 8. "
    "A test would need a prepared cohort of 2.",
}
RULES = [
    (r'float\("NAN"\)', "nan"),
    (r"filterwarnings", "warnfilter"),
    (r"strict=", "strict"),
    (r"zip\([^)]*, \)", "strict"),
    (r"np\.argsort\(-iou", "tieorder"),
    (r"torch\.argsort\(time", "coxties"),
    (r"risk \+ risk\.mean\(\)|\.to\(None\)", "coxshift"),
    (r"len\(ages\) >= 1", "onestd"),
    (r"handle\.read", "block"),
    (r'frame\["label"\] = None', "nanlabel"),
    (r"asarray\(|astype\(|dtype=", "dtype"),
    (r"min_mm3 < 0|small >= 0|n_p == 0 and n_t == 0|bincount", "shortcut"),
    (
        r"len\(patients\) (>|>=) (2|3)|len\(inner\) (>|>=) (2|3)|len\(patients\) > cfg\.folds",
        "tiny",
    ),
]


def _diff(name: str) -> tuple[list[str], list[str]]:
    """The original and the mutated lines of one mutant."""
    shown = subprocess.run(["mutmut", "show", name], capture_output=True, text=True).stdout
    lines = shown.splitlines()
    before = [
        line[1:].strip() for line in lines if line.startswith("-") and not line.startswith("---")
    ]
    after = [
        line[1:].strip() for line in lines if line.startswith("+") and not line.startswith("+++")
    ]
    return before, after


def _cell(code: str) -> str:
    return "`" + code.replace("|", "\\|").replace("`", "'")[:110] + "`"


def main(summary: str) -> int:
    results = subprocess.run(["mutmut", "results"], capture_output=True, text=True).stdout
    names = [
        r.split(":")[0].strip() for r in results.splitlines() if r.strip().endswith("survived")
    ]
    rows, unknown = [], []
    for name in names:
        before, after = _diff(name)
        key = next((k for pattern, k in RULES if any(re.search(pattern, a) for a in after)), None)
        if key is None:
            unknown.append(name)
            continue
        rows.append((name.removeprefix("hecktor."), (before or [""])[0], (after or [""])[0], key))
    if unknown:
        print(
            "survivors without a reason (a missing test?):", *unknown, sep="\n  ", file=sys.stderr
        )
        return 1
    lines = [
        "# Surviving mutants",
        "",
        "What `mutmut run` (README, Testing) leaves alive in the pure modules, and why no test kills",
        "it. `python tests/mutation_report.py SUMMARY` rewrites this file after a run.",
        "",
        summary,
        "",
        "## Why they survive",
        "",
    ]
    for key in sorted({r[3] for r in rows}, key=list(REASONS).index):
        lines.append(f"- **{key}** ({sum(r[3] == key for r in rows)}): {REASONS[key]}")
    lines += [
        "",
        "## The survivors",
        "",
        "| mutant | original | mutated | why |",
        "|---|---|---|---|",
    ]
    lines += [f"| {n} | {_cell(b)} | {_cell(a)} | {k} |" for n, b, a, k in rows]
    Path(__file__).with_name("MUTATION.md").write_text("\n".join(lines) + "\n")
    print(len(rows), "survivors written")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else ""))
