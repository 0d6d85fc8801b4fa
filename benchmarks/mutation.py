"""Mutation testing of irprune's core with mutmut 3.x; writes docs/mutation.md (issue #20).

Not part of the default test run, and mutmut is not in any extra. Install it by hand:

    pip install "mutmut>=3,<4"
    nice -n 10 python benchmarks/mutation.py ir cost layout     # some modules
    nice -n 10 python benchmarks/mutation.py all                # the whole core (hours on 1 worker)
    python benchmarks/mutation.py --report-only                 # rewrite the report from mutants/

The mutmut configuration (what is mutated, which tests run) is ``[tool.mutmut]`` in
pyproject.toml. mutmut keeps every verdict in ``mutants/`` (git-ignored), so modules can be run
one at a time and the report covers every module with a verdict; a module never run is listed as
"not run". A named module is re-tested from scratch (mutmut re-runs mutants it is given by name).

Kill rate = (killed + timeout) / (mutants checked); "no tests" counts as not killed. The
"adjusted" rate also leaves out the mutants named in ``EQUIVALENT`` below (each with the reason
it cannot change behaviour); their names are mutmut's (``module.x_function__mutmut_N``), which
follow the source: an edit of a function renumbers its mutants, so re-check the list after one.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# The core of issue #20, in priority order; a name is a group of source files.
MODULES: dict[str, list[str]] = {
    "ir": ["irprune/ir/graph.py", "irprune/ir/copy.py", "irprune/ir/mapped.py"],
    "cost": ["irprune/passes/analysis/cost.py"],
    "layout": ["irprune/passes/analysis/layout.py"],
    "channels": ["irprune/passes/analysis/channels.py"],
    "rules": sorted(
        str(p.relative_to(ROOT))
        for p in (ROOT / "irprune/passes/analysis/rules").glob("*.py")
        if p.name != "__init__.py"
    ),
    "drop": ["irprune/passes/rewrite/drop.py"],
    "merge": ["irprune/passes/rewrite/merge.py"],
    "refit": ["irprune/passes/rewrite/refit.py"],
    "verify": ["irprune/emit/verify.py"],
    "emit": ["irprune/emit/onnx.py", "irprune/emit/stream.py"],
    "synthesize": ["irprune/passes/synthesize.py"],
}

# Mutants that cannot change observable behaviour, with why. Excluded from the adjusted rate only.
EQUIVALENT: dict[str, str] = {
    **{
        f"irprune.ir.graph.xǁGraphǁ_make_constants__mutmut_{n}": "zip(strict=...) of outputs and "
        "arrays: both callers run _check_fold first, which rejects unequal lengths"
        for n in (3, 6, 7)
    },
    "irprune.ir.mapped.x_release__mutmut_8": "getattr(mmap, 'MADV_DONTNEED') without the None "
    "default: differs only where mmap has no MADV_DONTNEED (not POSIX, where irprune runs)",
    "irprune.passes.analysis.cost.xǁCostModelǁaxis_size__mutmut_9": "`rank or 2`: changes the "
    "axis key only for values of rank 0 or unknown rank, which never hold a layout; the fallback "
    "sample_dim reads the axis as given",
    "irprune.passes.analysis.layout.x_substitute__mutmut_4": "looks up mapping.get(None) for a "
    "fixed segment: mapping's keys are group roots (ints), so it is None either way",
    "irprune.passes.analysis.layout.x_positions__mutmut_6": "kept.get(None) for a fixed "
    "segment: kept's keys are group ids, so it is None either way",
    **{
        f"irprune.passes.analysis.layout.x_positions__mutmut_{n}": "np.arange/np.asarray without "
        "dtype=int64 on integer input: the default integer is int64 on the 64-bit platforms"
        for n in (13, 16, 21, 23, 28, 30, 33, 35)
    },
    **{
        f"irprune.passes.analysis.layout.x_same_geometry__mutmut_{n}": "zip(strict=...): the "
        "lengths were compared just before"
        for n in (9, 12, 13)
    },
    **{
        f"irprune.passes.analysis.cost.xǁProbeǁ__init____mutmut_{n}": "argsort kind (stable, "
        "default, 'STABLE'): ties only reorder entries that np.unique / np.bincount then "
        "combine, and the coefficients are integers, so sums are exact in any order"
        for n in (25, 27, 29, 42, 44, 46)
    },
    "irprune.passes.analysis.cost.xǁProbeǁ__init____mutmut_39": "// max(K, 2) instead of "
    "max(K, 1): K (factors per term) is at least 2 whenever a group exists (every source weight "
    "has 2+ axes), so the division is the same",
    **{
        f"irprune.passes.analysis.cost.xǁProbeǁ_touch__mutmut_{n}": "zip(strict=...) of "
        "searchsorted starts and ends of the same rows: equal lengths"
        for n in (40, 43, 44)
    },
    "irprune.passes.analysis.cost.xǁProbeǁ_touch__mutmut_22": "bincount without minlength: "
    "``inverse`` from np.unique hits every row index, so the length is len(rows) anyway",
    "irprune.passes.analysis.cost.xǁProbeǁ_touch__mutmut_54": "np.zeros(1) instead of (0) "
    "terms when a group has no factor rows: the extra term 0 is evaluated before and after an "
    "unchanged factor vector, so the delta is exactly 0",
    "irprune.passes.analysis.cost.xǁProbeǁwith_width__mutmut_4": "keep=None instead of False: "
    "only tested for truth",
    **{
        f"irprune.passes.analysis.cost.xǁCostModelǁevaluate__mutmut_{n}": "np.asarray(widths) "
        "without dtype=float64: integer widths give the same (exact) float products with the "
        "float coefficients"
        for n in (6, 8)
    },
    **{
        f"irprune.passes.analysis.cost.x_build_cost_model__mutmut_{n}": "zip(strict=...) of "
        "lists built from the same constants: equal lengths"
        for n in (32, 35, 36, 41, 44, 45)
    },
    **{
        f"irprune.passes.analysis.cost.x_build_cost_model__mutmut_{n}": "np.asarray of a list "
        "of Python floats without dtype=float64: float64 anyway"
        for n in (74, 76, 86, 88)
    },
    "irprune.ir.graph.xǁGraphǁunique_name__mutmut_4": "reads the suffix cache under None: the "
    "search then starts at base_1 and finds the same first free name (only slower)",
    "irprune.passes.analysis.cost.xǁ_Builderǁfactor__mutmut_8": "`rank or 2`: only for values "
    "of rank 0 or unknown rank, which have no layout and no static dim at any axis",
    "irprune.passes.analysis.cost.xǁ_Builderǁfactor__mutmut_9": "axis % max(rank, 2): differs "
    "only for an axis outside [0, rank) of a rank-1 value; every caller (params: range(ndim); "
    "the conv/linear/recurrent macs rules) passes axes in [0, rank)",
    **{
        f"irprune.passes.analysis.channels.xǁContextǁ{f}__mutmut_{n}": why
        for f, ns, why in [
            (
                "_union",
                (20,),
                "`<=`: which of two equal-sized member lists is extended; the "
                "union's members are the same",
            ),
            ("refine", (18,), "leaders = None: `leaders or new` replaces it at the first member"),
            (
                "refine",
                (26, 29, 30, 43, 46, 47),
                "zip(strict=...) of lists that all have len(pieces) entries",
            ),
            (
                "refine",
                (67,),
                "users.pop(None): retired roots keep stale ``users`` keys, which "
                "``_holding`` re-checks and refine never reads again (retired roots are skipped)",
            ),
            (
                "join",
                (7, 11),
                "the sizes of the segments handed to freeze: freeze reads roots only",
            ),
            (
                "coarsen",
                (11, 17),
                "placeholder root of the refine piece: refine gives every piece "
                "a new root; placeholders only feed the expressibility check, which ignores roots",
            ),
            (
                "_cut_root",
                (14, 18, 19, 23),
                "placeholder roots of the refine pieces: refine gives every piece a new root",
            ),
            ("_cut_root", (5, 7), "the s.root-is-None branch: only called with grouped segments"),
            (
                "_replace_fixed",
                (8,),
                "`rank or 2`: values of rank 0 or unknown rank hold no layout",
            ),
            ("axes", (2,), "axes(None) would read layouts.get(id(None), {}): {} either way"),
            (
                "source",
                (3,),
                "`or` in an assert against rule bugs: a missing or computed weight "
                "still fails, one line later",
            ),
            ("_couple", (4, 6), "a larger iteration bound: alignment converges well within it"),
            ("_couple", (21, 24, 25), "zip(strict=...) right after same_geometry: equal lengths"),
            ("_couple", (26,), "`or`: same_geometry makes both roots None or both not None"),
            (
                "_align_step",
                (3, 4, 5),
                "the loop bounds: only called for layouts of the same axis "
                "(equal spans) and different geometry, so it returns at a differing pair before "
                "either side ends",
            ),
            ("_align_step", (22,), "`>=`: only reached when the spans differ"),
            ("_align_step", (32, 33), "k = i or j: i and j only ever advance together"),
            (
                "_align_step",
                (45,),
                "(a, b) unchanged instead of None when coarsening fails: "
                "_couple repeats the step to its bound and freezes with the same reason",
            ),
            (
                "_coarsen_to",
                (10, 18, 22),
                "True (or coarsen by 1) instead of False: the layouts "
                "stay unchanged, so _couple ends in the same freeze (see _align_step 45)",
            ),
            (
                "_coarsen_to",
                (14,),
                "`<=`: equal blocks with equal spans are the same segment, never passed here",
            ),
            (
                "__init__",
                (8,),
                "opset 1 instead of 0 without a default-domain import: every "
                "opset threshold in the rules is 11 or more",
            ),
        ]
        for n in ns
    },
    **{
        f"irprune.passes.analysis.rules.pool.x__reduce__mutmut_{n}": "noop_with_empty_axes read "
        "with default None instead of 0: both falsy"
        for n in (36, 38)
    },
    "irprune.passes.analysis.rules.pool.x__reduce__mutmut_53": "keepdims default 2 instead of "
    "1: only tested for truth",
    "irprune.passes.analysis.rules.pool.x__reduce__mutmut_69": "`r <= axis`: a reduced axis is "
    "never the carried axis here (those were refused just before)",
    **{
        f"irprune.passes.analysis.rules.blocks.x_misaligned__mutmut_{n}": "the running offset "
        "(`=`/`-=` instead of `+=`): every segment passed so far has a span that is a multiple "
        "of the unit (checked), so any of these offsets is one too"
        for n in (12, 13)
    },
    "irprune.passes.analysis.rules.base.x_axes_arg__mutmut_4": "const_ints(None) is None, the "
    "same as the else branch",
    "irprune.passes.analysis.rules.const_chain.x__input_axis__mutmut_8": "`rank or 1`: chain "
    "links are only followed for values with a known, non-zero rank",
    "irprune.passes.analysis.cost.xǁ_Builderǁterms__mutmut_6": "max(..., default=1) for no "
    "terms: the index array is max(width, 1) wide either way",
    "irprune.passes.analysis.cost.xǁ_Builderǁterms__mutmut_19": "max(width, 2) columns: the "
    "extra column is -1, the factor 1",
}

NOTES = [
    "Notes on the setup:",
    "",
    "- mutmut copies irprune/ and tests/ (plus models/, `also_copy`) into mutants/ and puts it "
    "first on sys.path; the editable install's finder only answers after the path, so the tests "
    "import the mutated copy (mutmut's forced-fail check and the kills confirm it).",
    "- `OMP_NUM_THREADS=1`, one worker (`--max-children 1`) and `nice -n 10`: the machine is "
    "shared. A mutant's tests are the ones that called its function in mutmut's stats run.",
    "- The tree changed under the runs (another engineer's commits): mutmut re-generates the "
    "mutants of every function whose source changed and re-tests them, so each figure is for "
    "the source as of the last run that covered it (cost.py gained subgraph_compute meanwhile).",
    "- From 01:46 UTC the runs deselect (PYTEST_ADDOPTS) a test that fails on its own in the "
    "working tree at the time "
    "(test_rules_recurrent.py::test_refit_after_removing_hidden_units_brings_the_output_closer"
    "[RNN] passes in its file's order and fails alone): a flaky test would count as kills.",
]

# Tests written to kill survivors that were real gaps (the report lists them).
KILLERS: dict[str, str] = {
    "tests/ir/test_graph_mutants.py": "fold_node/fold_nodes, unique_name, consumers, "
    "remove_dead_nodes/remove_unused_constants, dim bounds, error messages, copy_structure",
    "tests/ir/test_mapped.py": "the exact byte range release() advises (offset memmaps, raw "
    "mappings, data numpy did not lay out), empty views, refused or closed mappings",
    "tests/passes/analysis/test_cost_mutants.py": "MACs/params/bytes known answers at any "
    "widths (blocks of columns, fixed channels around a group, no MAC ops), axis_size, Probe "
    "against full evaluation, unknown dims, Cost.ratio, subgraph_compute",
    "tests/passes/analysis/test_channels_context.py": "Context: lining layouts up (cut, "
    "coarsen, common prefixes, fixed splits on either side), join, refine, cut, tie, the freeze "
    "reasons (unknown shapes, constants, graph inputs, unbound uses), analyze's log line",
    "tests/passes/analysis/test_rules_base_chain.py": "static_product, const_ints, axes_arg, "
    "a weight behind a Transpose (default and explicit perm), reductions: shifted axes, axes "
    "from an input by opset, run-time axes refused, noop_with_empty_axes; Softmax's axis "
    "before and from opset 13; blocks.misaligned; an elementwise op of unknown output shape; "
    "pooling, and MaxPool's Indices refused when read; LayerNormalization's axis",
    "tests/passes/rewrite/test_drop_mutants.py": "drop on two convs: the sliced data, the "
    "shapes it records on constants and activations, its summary and log line, _onnx_dtype",
    "tests/passes/analysis/test_layout.py": "positions, channel_positions/slices, same_geometry, "
    "merge_axes, resized, substitute against a brute-force enumeration",
}

STATUS = {  # mutmut.stats.status_by_exit_code (3.8)
    1: "killed",
    3: "killed",
    0: "survived",
    5: "no tests",
    33: "no tests",
    2: "interrupted",
    None: "not checked",
    34: "skipped",
    35: "suspicious",
    36: "timeout",
    37: "type check",
    -24: "timeout",
    24: "timeout",
    152: "timeout",
    255: "timeout",
    -11: "segfault",
    -9: "segfault",
}


def module_of(path: str) -> str:
    return path.removesuffix(".py").replace("/", ".")


@dataclass
class FileResult:
    path: str
    status: dict[str, str] = field(default_factory=dict)  # mutant name -> status

    def count(self, *statuses: str) -> int:
        return sum(1 for s in self.status.values() if s in statuses)

    @property
    def checked(self) -> int:
        return len(self.status) - self.count("not checked", "skipped", "interrupted")


def load(path: str) -> FileResult:
    result = FileResult(path)
    meta = ROOT / "mutants" / (path + ".meta")
    if meta.exists():
        codes = json.loads(meta.read_text())["exit_code_by_key"]
        result.status = {k: STATUS.get(v, "suspicious") for k, v in sorted(codes.items())}
    return result


def changed_lines(name: str, path: str) -> str:
    """The mutant's '+' lines, from mutmut's own diff (empty when mutmut cannot show it)."""
    try:
        from mutmut.mutation.diff_apply import get_diff_for_mutant

        diff = get_diff_for_mutant(name, path=path)
    except Exception:
        return ""
    plus = [ln[1:].strip() for ln in diff.splitlines() if ln.startswith("+") and ln[:3] != "+++"]
    return " / ".join(plus)[:160]


@dataclass
class Row:
    mutants: int = 0
    checked: int = 0
    killed: int = 0
    timeout: int = 0
    survived: int = 0
    no_tests: int = 0
    equivalent: int = 0

    @classmethod
    def of(cls, results: list[FileResult]) -> Row:
        row = cls()
        for r in results:
            row.mutants += len(r.status)
            row.checked += r.checked
            row.killed += r.count("killed")
            row.timeout += r.count("timeout")
            row.survived += r.count("survived", "suspicious", "segfault")
            row.no_tests += r.count("no tests")
            row.equivalent += sum(
                1 for k, s in r.status.items() if k in EQUIVALENT and s not in ("killed", "timeout")
            )
        return row

    def add(self, other: Row) -> None:
        if other.checked:
            for name in vars(self):
                setattr(self, name, getattr(self, name) + getattr(other, name))

    def line(self, label: str, run_only: bool = False) -> str:
        if not self.checked:
            return f"| {label} | {self.mutants or '-'} | not run | | | | | | | |"
        dead = self.killed + self.timeout
        checked = f"{self.checked}" if self.checked == self.mutants else f"{self.checked} (part)"
        return (
            f"| {label} | {self.mutants} | {checked} | {self.killed} | {self.timeout} | "
            f"{self.survived} | {self.no_tests} | {rate(dead, self.checked)} | "
            f"{self.equivalent} | {rate(dead, self.checked - self.equivalent)} |"
        )


def rate(killed: int, checked: int) -> str:
    return f"{100 * killed / checked:.1f}%" if checked else "-"


RUNS = ROOT / "mutants" / "mutation-runs.json"  # the driver's commands, for the report


def runs() -> list[dict[str, str]]:
    return json.loads(RUNS.read_text()) if RUNS.exists() else []


def record_run(command: str) -> None:
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    RUNS.write_text(json.dumps([*runs(), {"date": now, "command": command}], indent=1))


def report(out: Path) -> str:
    version = metadata.version("mutmut")
    lines = [
        "# Mutation testing",
        "",
        "mutmut 3.x mutates irprune's core and runs the fast unit tests that cover each mutant",
        "(`[tool.mutmut]` in pyproject.toml: the tests under tests/ir, tests/passes/analysis,",
        "tests/passes/rewrite, tests/emit and tests/passes/test_synthesize.py, with the",
        "reference-model and exporter-heavy cases deselected). Not part of the default test run;",
        "mutmut is in no extra. The figures below are measured, never estimated: a module not yet",
        "run says so.",
        "",
        "```sh",
        'pip install "mutmut>=3,<4"',
        "nice -n 10 python benchmarks/mutation.py <module>... | all   # --survivors: re-test those",
        "python benchmarks/mutation.py --report-only   # rewrite this file from mutants/",
        "```",
        "",
        "The runs that produced the figures below (each `mutmut run --max-children 1 <mutants>`):",
        "",
        *[f"- {r['date']}: `{r['command']}`" for r in runs()],
        "",
        f"Written {datetime.date.today().isoformat()} by benchmarks/mutation.py with mutmut "
        f"{version}. Kill rate = (killed + timeout) / checked (issue #20 asks for 85% or more); "
        "*adjusted* also leaves out the equivalent mutants named below. A mutant is named "
        "`module.x_function__mutmut_N` (`xǁClassǁmethod` for methods); `mutmut show NAME` "
        "prints its diff.",
        "",
        *NOTES,
        "",
        "| module | mutants | checked | killed | timeout | survived | no tests | kill rate | "
        "equivalent | adjusted |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    survivors: dict[str, list[tuple[str, str]]] = {}
    total = Row()
    not_run: list[str] = []
    for group, paths in MODULES.items():
        results = [load(p) for p in paths]
        rows = [(f"{group}: {Path(r.path).name}", Row.of([r])) for r in results]
        if len(paths) > 1:
            rows.append((f"**{group}**", Row.of(results)))
        else:
            rows = [(group, rows[0][1])]
        for label, row in rows:
            lines.append(row.line(label))
        whole = Row.of(results)
        total.add(whole)
        if not whole.checked:
            not_run.append(group)
            continue
        if whole.checked < whole.mutants:
            not_run += [f"{group}: {Path(r.path).name}" for r in results if not r.checked]
        survivors[group] = [
            (k, r.path)
            for r in results
            for k, s in r.status.items()
            if s in ("survived", "suspicious", "segfault", "no tests") and k not in EQUIVALENT
        ]
    lines.append(total.line("**total (run)**", run_only=True))
    lines += [
        "",
        f"Not run yet: {', '.join(not_run) if not_run else 'none'}.",
        "",
        "## Equivalent mutants",
        "",
        "Mutants that survive because no behaviour can tell them apart from the original:",
        "",
    ]
    grouped: dict[tuple[str, str], list[int]] = {}
    for k, why in EQUIVALENT.items():
        function, _, number = k.rpartition("__mutmut_")
        grouped.setdefault((function, why), []).append(int(number))
    lines += [
        f"- `{function}` {', '.join(map(str, sorted(ns)))}: {why}"
        for (function, why), ns in sorted(grouped.items())
    ] or ["- none named"]
    lines += ["", "## Tests written from the survivors", ""]
    lines += [f"- `{path}`: {what}" for path, what in KILLERS.items()]
    lines += ["", "## Surviving mutants by module", ""]
    for group, names in survivors.items():
        if not names:
            lines += [f"### {group}", "", "None.", ""]
            continue
        lines += [
            f"### {group} ({len(names)})",
            "",
            "<details><summary>names and mutated lines</summary>",
            "",
        ]
        lines += [f"- `{k}`: `{changed_lines(k, p)}`" for k, p in names]
        lines += ["", "</details>", ""]
    text = "\n".join(lines).rstrip() + "\n"
    out.write_text(text)
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "modules", nargs="*", help=f"'all', some of: {', '.join(MODULES)}, or their source files"
    )
    parser.add_argument("--report-only", action="store_true", help="only rewrite the report")
    parser.add_argument(
        "--survivors",
        action="store_true",
        help="re-test only the named modules' mutants not yet killed (after adding tests)",
    )
    parser.add_argument("--max-children", type=int, default=1, help="mutmut workers (default 1)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "mutation.md")
    args = parser.parse_args(argv)
    os.chdir(ROOT)
    names = list(MODULES) if args.modules == ["all"] else args.modules
    every = {p for paths in MODULES.values() for p in paths}
    unknown = [m for m in names if m not in MODULES and m not in every]
    if unknown or not (names or args.report_only):
        parser.error(
            f"unknown or no modules {unknown}; choose from: all, {', '.join(MODULES)} "
            "or a source file of one (e.g. irprune/passes/analysis/rules/conv.py)"
        )
    if names and not args.report_only:
        paths = [p for m in names for p in MODULES.get(m, [m])]
        globs = [module_of(p) + ".*" for p in paths]
        if args.survivors:
            globs = [
                k
                for p in paths
                for k, s in load(p).status.items()
                if s not in ("killed", "timeout")
                and (k not in EQUIVALENT or s in ("no tests", "not checked"))
            ]
            if not globs:
                print("no surviving mutants to re-test")
        cmd = ["mutmut", "run", "--max-children", str(args.max_children), *globs]
        env = dict(os.environ, OMP_NUM_THREADS="1")
        command = "nice -n 10 python benchmarks/mutation.py " + " ".join(args.modules)
        if globs:
            print("$", shlex.join(cmd[:6]), "..." if len(cmd) > 6 else "", flush=True)
            code = subprocess.call(cmd, env=env)
            extra = os.environ.get("PYTEST_ADDOPTS")  # e.g. a --deselect of a test broken meanwhile
            prefix = f"PYTEST_ADDOPTS={shlex.quote(extra)} " if extra else ""
            record_run(prefix + command + (" --survivors" if args.survivors else ""))
            if code:
                print(f"mutmut exited with {code}", file=sys.stderr)
    print(report(args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
