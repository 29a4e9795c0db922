"""A tabular preprocessing step that is fitted once and saved as JSON.

Numeric columns are standardised with the training mean and standard
deviation (:mod:`dagmm.training.scaling`: float64, finite for any finite
column, a constant column gets scale 1); categorical columns (object, string,
category or bool dtype) are one-hot encoded with the categories seen in
training.  Columns are looked up by name, so a file whose columns come in
another order gives the same matrix.  A category never seen in training
encodes as all zeros in its group, which the detector then sees as unusual,
as it should.

Categorical values are compared as text: ``dagmm score`` reads the columns
that were categorical at fit as strings in every chunk
(:func:`dagmm.tables.tableio.iter_table`), so a chunk holding only ``"1"`` and
``"2"`` still matches the categories ``"1"`` and ``"2"``.

Missing values have one meaning per kind of column:

- **numeric**: an error naming the column and the rows (impute or ``--exclude``);
- **categorical**: a category of its own, :data:`MISSING` (``"<missing>"``).
  Learnt like any other when the training data has blanks; when it had none, a
  blank at score time is an unseen category (all zeros in its group).

A string column with more distinct values than :data:`MAX_CATEGORIES` (or
than half the rows of a table of at least :data:`MIN_ROWS_FOR_ID_CHECK` rows)
looks like an identifier and is refused: one-hot encoding it would give one
feature per row.
"""

from __future__ import annotations

import json
from typing import Any, Optional, Sequence

import numpy as np

from ..training.scaling import apply_scaling, fit_scaling

__all__ = ["MAX_CATEGORIES", "MISSING", "TabularPreprocessor"]

FORMAT_VERSION = 1

#: The category a missing value (blank, NA, NaN, null) of a categorical column falls in.
MISSING = "<missing>"
#: Default cap on the distinct values of one categorical column (``--max-categories``).
MAX_CATEGORIES = 256
#: Below this many rows the "more distinct values than half the rows" rule is not applied.
MIN_ROWS_FOR_ID_CHECK = 50


def _pandas():
    try:
        import pandas as pd
    except ImportError as err:  # pragma: no cover - pandas is present in the test env
        raise ImportError("Tabular files need pandas: pip install pandas") from err
    return pd


class TabularPreprocessor:
    """One-hot encoding plus standardisation, fitted on a DataFrame.

    Parameters
    ----------
    columns : sequence of str, optional
        Use only these columns (default: all but ``exclude`` and ``label_column``).
    exclude : sequence of str, optional
        Columns to leave out (ids, timestamps, ...).
    label_column : str, optional
        Never used as a feature.
    max_categories : int, default :data:`MAX_CATEGORIES`
        Most distinct values a categorical column may have.
    """

    def __init__(self, columns: Optional[Sequence[str]] = None, exclude: Optional[Sequence[str]] = None,
                 label_column: Optional[str] = None, max_categories: int = MAX_CATEGORIES) -> None:
        self.columns = list(columns) if columns is not None else None
        self.exclude = list(exclude or [])
        self.label_column = label_column
        if isinstance(max_categories, bool) or not isinstance(max_categories, int) or max_categories < 1:
            raise ValueError(f"max_categories (--max-categories) must be a positive integer, got {max_categories!r}.")
        self.max_categories = max_categories

    @staticmethod
    def is_categorical(col: Any) -> bool:
        """Whether a column is one-hot encoded (bool, or not numeric) rather than standardised."""
        pd = _pandas()
        return bool(pd.api.types.is_bool_dtype(col) or not pd.api.types.is_numeric_dtype(col))

    @property
    def categorical_columns(self) -> list[str]:
        """The fitted categorical columns, which readers must load as strings."""
        return list(self.categorical_)

    # ----------------------------------------------------------------- fit
    def fit(self, df: Any) -> "TabularPreprocessor":
        """Learn the columns, categories and scaling from ``df`` (a DataFrame)."""
        pd = _pandas()
        self._check_columns(df, self.columns or [], "--columns")
        self._check_columns(df, self.exclude, "--exclude")
        if self.label_column is not None:
            self._check_columns(df, [self.label_column], "--label-column")
        skip = set(self.exclude) | ({self.label_column} if self.label_column else set())
        names = [c for c in (self.columns or list(df.columns)) if c not in skip]
        if not names:
            raise ValueError("No feature columns left after --columns/--exclude/--label-column.")
        if len(df) == 0:
            raise ValueError("The training data has no rows.")
        numeric: dict[str, tuple[float, float]] = {}
        categorical: dict[str, list[str]] = {}
        for name in names:
            col = df[name]
            if self.is_categorical(col):
                cats = sorted(set(_as_text(col).tolist()))
                limit = self.max_categories
                if len(df) >= MIN_ROWS_FOR_ID_CHECK:
                    limit = min(limit, len(df) // 2)
                if len(cats) > limit:
                    raise ValueError(
                        f"Column {name!r} has {len(cats)} distinct values in {len(df)} rows, more than "
                        f"{limit} ({'half the rows' if limit < self.max_categories else '--max-categories'}): "
                        "it looks like an identifier or free text (or numbers written as text, e.g. with units or "
                        "thousands separators), and one-hot encoding it would give one feature per value. Leave it "
                        f"out with --exclude {name} (to keep it beside the scores, pass `dagmm score --id-column "
                        f"{name}`), or raise --max-categories if it really is a category."
                    )
                categorical[name] = cats
            else:
                values = col.to_numpy(dtype=np.float64)
                self._check_finite(values, name, np.arange(len(values)))
                mean, scale = fit_scaling(values[:, None], columns=[name])
                numeric[name] = (float(mean[0]), float(scale[0]))
        self.numeric_, self.categorical_ = numeric, categorical
        self.feature_columns_ = names
        return self

    @property
    def n_output_features(self) -> int:
        return len(self.numeric_) + sum(len(c) for c in self.categorical_.values())

    def output_names(self) -> list[str]:
        """Names of the output columns, in order."""
        out = []
        for name in self.feature_columns_:
            if name in self.numeric_:
                out.append(name)
            else:
                out.extend(f"{name}={cat}" for cat in self.categorical_[name])
        return out

    # ----------------------------------------------------------- transform
    def transform(self, df: Any, row_offset: int = 0) -> np.ndarray:
        """Encode ``df`` to a float32 array of shape (len(df), n_output_features).

        ``row_offset`` is added to row numbers in error messages (for chunks).
        """
        self._check_columns(df, self.feature_columns_, "the fitted model's columns")
        rows = np.arange(row_offset, row_offset + len(df))
        parts = []
        for name in self.feature_columns_:
            col = df[name]
            if name in self.numeric_:
                mean, std = self.numeric_[name]
                values = self._numbers(col, name, rows)
                self._check_finite(values, name, rows)
                try:
                    parts.append(apply_scaling(values[:, None], np.array([mean]), np.array([std]),
                                               f"Column {name!r}", first_row=row_offset))
                except ValueError as err:
                    raise ValueError(f"{err} The training values were around {mean:.6g} +- {std:.6g}.") from None
            else:
                cats = self.categorical_[name]
                as_str = _as_text(col).to_numpy(dtype=object)
                parts.append((as_str[:, None] == np.asarray(cats, dtype=object)[None, :]).astype(np.float32))
        return np.ascontiguousarray(np.concatenate(parts, axis=1), dtype=np.float32)

    def fit_transform(self, df: Any) -> np.ndarray:
        return self.fit(df).transform(df)

    # ---------------------------------------------------------------- JSON
    def to_dict(self) -> dict:
        return {
            "format_version": FORMAT_VERSION,
            "columns": self.columns,
            "exclude": self.exclude,
            "label_column": self.label_column,
            "feature_columns": self.feature_columns_,
            "numeric": {k: list(v) for k, v in self.numeric_.items()},
            "categorical": self.categorical_,
            "max_categories": self.max_categories,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "TabularPreprocessor":
        version = d.get("format_version")
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise ValueError(
                f"Preprocessor format version {version!r} is newer than this dagmm supports "
                f"({FORMAT_VERSION}); upgrade dagmm."
            )
        pre = cls(d.get("columns"), d.get("exclude"), d.get("label_column"),
                  d.get("max_categories", MAX_CATEGORIES))
        pre.feature_columns_ = list(d["feature_columns"])
        pre.numeric_ = {k: (float(v[0]), float(v[1])) for k, v in d["numeric"].items()}
        pre.categorical_ = {k: [str(c) for c in v] for k, v in d["categorical"].items()}
        return pre

    def save(self, path: str) -> None:
        with open(path, "w", encoding="utf-8") as fh:
            json.dump(self.to_dict(), fh, indent=2, allow_nan=False)

    @classmethod
    def load(cls, path: str) -> "TabularPreprocessor":
        with open(path, encoding="utf-8") as fh:
            return cls.from_dict(json.load(fh))

    # ------------------------------------------------------------- helpers
    @staticmethod
    def _check_columns(df: Any, names: Sequence[str], what: str) -> None:
        missing = [c for c in names if c not in df.columns]
        if missing:
            raise ValueError(
                f"Column(s) {', '.join(repr(c) for c in missing)} from {what} not found; the data has "
                f"columns {', '.join(repr(str(c)) for c in list(df.columns)[:20])}"
                + (", ..." if len(df.columns) > 20 else "") + "."
            )

    @staticmethod
    def _numbers(col: Any, name: str, rows: np.ndarray) -> np.ndarray:
        """A numeric column as float64; text that is not a number is an error naming the rows."""
        pd = _pandas()
        try:
            return col.to_numpy(dtype=np.float64)
        except (TypeError, ValueError):
            pass
        parsed = pd.to_numeric(col, errors="coerce").to_numpy(dtype=np.float64)
        bad = np.isnan(parsed) & ~col.isna().to_numpy()
        where = rows[bad]
        shown = ", ".join(str(int(r)) for r in where[:10]) + (", ..." if where.size > 10 else "")
        first = col.to_numpy()[bad][0] if bad.any() else None
        raise ValueError(f"Column {name!r} was numeric in training but holds non-numeric values here "
                         f"(e.g. {str(first)[:40]!r}) in {where.size} row(s): {shown}.")

    @staticmethod
    def _check_finite(values: np.ndarray, name: str, rows: np.ndarray) -> None:
        bad = ~np.isfinite(values)
        if bad.any():
            where = rows[bad]
            shown = ", ".join(str(int(r)) for r in where[:10]) + (", ..." if where.size > 10 else "")
            raise ValueError(f"Column {name!r} has NaN or infinite values in {where.size} row(s): {shown}. "
                             f"A blank cell is NaN: impute them first, or leave the column out with --exclude {name}.")


def _as_text(col: Any) -> Any:
    """A categorical column as text, missing values as :data:`MISSING` (a pandas Series of str)."""
    missing = col.isna().to_numpy()
    text = col.astype(str)
    if missing.any():
        text = text.where(~missing, MISSING)
    return text
