"""Table definitions (``tables.yaml``) and the paper's numbers (``paper_numbers.yaml``), as typed objects.

A table has blocks; a block selects runs by its ``where`` pairs and splits them into columns (grid
cells); rows split them by method or by a method knob. Every value slot can point at a paper
number by (paper row, paper column). See the comment at the top of ``tables.yaml``.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

HERE = Path(__file__).resolve().parent
TABLES_FILE = HERE / "tables.yaml"
PAPER_FILE = HERE / "paper_numbers.yaml"

Match = dict[str, Any]


class SpecError(ValueError):
    """tables.yaml or paper_numbers.yaml is inconsistent."""


def _fmt_value(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


KEY_LABELS = {"split.imbalance_factor": "IF", "split.noise_rate": "p", "split.meta_per_class": "meta k"}


def match_label(match: Mapping[str, Any]) -> str:
    """``{split.imbalance_factor: 50, split.noise_rate: 0.0}`` -> ``IF 50, p 0``."""
    return ", ".join(f"{KEY_LABELS[k]} {_fmt_value(v)}" if k in KEY_LABELS else f"{k}={_fmt_value(v)}"
                     for k, v in match.items())


@dataclass(frozen=True)
class ColumnSpec:
    label: str
    match: Match
    paper_col: str | None


@dataclass(frozen=True)
class RowSpec:
    label: str
    match: Match | None  # None: reported only (the paper's number, no run)
    paper_row: str | None = None
    paper_col: str | None = None

    @property
    def reported_only(self) -> bool:
        return self.match is None


@dataclass(frozen=True)
class ExtraSpec:
    """A per-run scalar averaged per row (e.g. Table 8's meta-step time).

    ``value`` is ``per_epoch:KEY`` (mean of ``diagnostics.per_epoch[*].KEY``) or a dotted path in
    the record (``wall_time_s``, ``diagnostics.last.KEY``).
    """

    label: str
    value: str
    paper_row: str | None = None


@dataclass(frozen=True)
class BlockSpec:
    label: str
    where: Match
    columns: tuple[ColumnSpec, ...]
    paper_row: str | None = None
    paper_col: str | None = None
    extras: tuple[ExtraSpec, ...] = ()


@dataclass(frozen=True)
class TableSpec:
    id: str
    title: str
    layout: str  # cells | ma
    suites: tuple[str, ...]
    rows: tuple[RowSpec, ...] | None  # None: one row per method
    blocks: tuple[BlockSpec, ...]
    paper: str | None = None  # key in paper_numbers.yaml
    paper_rows: Mapping[str, str] = field(default_factory=dict)  # method -> paper row (rows: methods)
    ma: bool = False  # cells layout: add MA columns
    ma_chart: bool = False
    row_header: str = "Method"
    measured: bool = False  # a suite of this benchmark: shown first, ranked by MA, with bootstrap intervals

    @property
    def has_ma(self) -> bool:
        return self.layout == "ma" or self.ma


@dataclass(frozen=True)
class PaperTable:
    caption: str
    columns: tuple[str, ...]
    rows: Mapping[str, tuple[float, ...]]
    notes: tuple[str, ...] = ()

    def value(self, row: str | None, col: str | None) -> float | None:
        if row is None or col is None or row not in self.rows or col not in self.columns:
            return None
        return self.rows[row][self.columns.index(col)]


@dataclass(frozen=True)
class Specs:
    methods: Mapping[str, str]  # registry name -> display name, in row order
    tables: tuple[TableSpec, ...]
    paper: Mapping[str, PaperTable]
    paper_source: str

    def method_label(self, method: str) -> str:
        return self.methods.get(method, method)

    def table(self, table_id: str) -> TableSpec:
        for t in self.tables:
            if t.id == table_id:
                return t
        raise KeyError(table_id)


def _columns(raw: Any) -> tuple[ColumnSpec, ...]:
    if isinstance(raw, Mapping) and "grid" in raw:
        keys = list(raw["grid"])
        matches = [dict(zip(keys, combo)) for combo in itertools.product(*(raw["grid"][k] for k in keys))]
        raw = matches
    cols = []
    for item in raw or [{}]:
        item = dict(item)
        label = item.pop("label", None)
        paper_col = item.pop("paper_col", None)
        match = dict(item.pop("match", item))
        label = label or match_label(match) or "all"
        cols.append(ColumnSpec(label, match, paper_col or (label if match else None)))
    return tuple(cols)


def _row_label(raw: Mapping[str, Any], methods: Mapping[str, str]) -> str:
    """Explicit label, else the method's display name for a method-only match, else the paper's label."""
    match = raw.get("match") or {}
    if raw.get("label"):
        return str(raw["label"])
    if set(match) == {"method"}:
        return methods.get(match["method"], match["method"])
    return str(raw.get("paper_row") or raw.get("paper_col") or match_label(match))


def _table(raw: Mapping[str, Any], methods: Mapping[str, str]) -> TableSpec:
    if raw.get("layout") not in ("cells", "ma"):
        raise SpecError(f"table {raw.get('id')}: layout must be cells or ma")
    rows = None
    if raw["rows"] != "methods":
        rows = tuple(
            RowSpec(_row_label(r, methods), dict(r["match"]) if r.get("match") is not None else None,
                    r.get("paper_row"), r.get("paper_col"))
            for r in raw["rows"]
        )
    blocks = tuple(
        BlockSpec(b["label"], {k: v for k, v in (b.get("where") or {}).items() if v is not None},  # null: unpinned
                  _columns(b.get("columns")), b.get("paper_row"),
                  b.get("paper_col"), tuple(ExtraSpec(**e) for e in b.get("extras") or ()))
        for b in raw["blocks"]
    )
    return TableSpec(raw["id"], raw["title"], raw["layout"], tuple(raw.get("suites") or ()), rows, blocks,
                     raw.get("paper"), dict(raw.get("paper_rows") or {}), bool(raw.get("ma", False)),
                     bool(raw.get("ma_chart", False)), raw.get("row_header", "Method"),
                     measured=bool(raw.get("measured", False)))


def load_specs(tables_file: Path = TABLES_FILE, paper_file: Path = PAPER_FILE) -> Specs:
    """Read and cross-check both files."""
    t = yaml.safe_load(tables_file.read_text())
    p = yaml.safe_load(paper_file.read_text())
    paper = {
        key: PaperTable(v["caption"], tuple(v["columns"]), {r: tuple(vals) for r, vals in v["rows"].items()},
                        tuple(v.get("notes") or ()))
        for key, v in p["tables"].items()
    }
    methods = dict(t["methods"])
    specs = Specs(methods, tuple(_table(raw, methods) for raw in t["tables"]), paper, p["source"])
    check_specs(specs)
    return specs


def paper_coordinates(table: TableSpec, row: RowSpec, block: BlockSpec,
                      column: ColumnSpec | None) -> tuple[str | None, str | None]:
    """(paper row, paper column) of a value slot; column None means the block's MA or single value."""
    prow = row.paper_row or block.paper_row
    pcol = (column.paper_col if column is not None else None) or row.paper_col or block.paper_col
    return prow, pcol


def check_specs(specs: Specs) -> None:
    """Every paper number is used by exactly one slot, and every slot points at a real number."""
    ids = [t.id for t in specs.tables]
    if len(set(ids)) != len(ids):
        raise SpecError(f"duplicate table ids in {TABLES_FILE.name}: {ids}")
    used: dict[tuple[str, str, str], str] = {}
    for table in specs.tables:
        if table.paper is None:
            continue
        if table.paper not in specs.paper:
            raise SpecError(f"table {table.id}: no paper table {table.paper!r}")
        ptab = specs.paper[table.paper]
        rows = table.rows if table.rows is not None else tuple(
            RowSpec(specs.method_label(m), {"method": m}, table.paper_rows.get(m)) for m in specs.methods)
        for row in rows:
            for block in table.blocks:
                slots: list[ColumnSpec | None] = [None] if table.layout == "ma" else list(block.columns)
                for col in slots:
                    _use(used, table, ptab, paper_coordinates(table, row, block, col), row)
                for extra in block.extras:
                    _use(used, table, ptab, (extra.paper_row, row.paper_col or block.paper_col), row)
        for prow, vals in ptab.rows.items():
            if len(vals) != len(ptab.columns):
                raise SpecError(f"paper {table.paper}, row {prow!r}: {len(vals)} values, {len(ptab.columns)} columns")
            for pcol in ptab.columns:
                if (table.paper, prow, pcol) not in used:
                    raise SpecError(f"paper {table.paper}: ({prow!r}, {pcol!r}) is used by no table slot")


def _use(used: dict[tuple[str, str, str], str], table: TableSpec, ptab: PaperTable,
         coords: tuple[str | None, str | None], row: RowSpec) -> None:
    prow, pcol = coords
    if ptab.value(prow, pcol) is None:
        if prow is None or pcol is None:
            return  # e.g. a method the paper does not have
        raise SpecError(f"table {table.id}: row {row.label!r} points at paper ({prow!r}, {pcol!r}), "
                        "which does not exist")
    key = (str(table.paper), str(prow), str(pcol))
    if key in used and used[key] != table.id:
        raise SpecError(f"paper number {key} is used by tables {used[key]} and {table.id}")
    used[key] = table.id
