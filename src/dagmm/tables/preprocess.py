"""A tabular preprocessing step that is fitted once and saved as JSON.

Numeric columns are standardised with the training mean and standard
deviation; categorical columns (object, string, category or bool dtype) are
one-hot encoded with the categories seen in training.  Columns are looked up
by name, so a file whose columns come in another order gives the same
matrix.  A category never seen in training encodes as all zeros in its group,
which the detector then sees as unusual, as it should.
"""

from __future__ import annotations

import json
from typing import Any, Optional, Sequence

import numpy as np

__all__ = ["TabularPreprocessor"]

FORMAT_VERSION = 1


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
    """

    def __init__(self, columns: Optional[Sequence[str]] = None, exclude: Optional[Sequence[str]] = None,
                 label_column: Optional[str] = None) -> None:
        self.columns = list(columns) if columns is not None else None
        self.exclude = list(exclude or [])
        self.label_column = label_column

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
        self.numeric_: dict[str, tuple[float, float]] = {}
        self.categorical_: dict[str, list[str]] = {}
        for name in names:
            col = df[name]
            if pd.api.types.is_bool_dtype(col) or not pd.api.types.is_numeric_dtype(col):
                cats = sorted({str(v) for v in col.dropna().unique()})
                self.categorical_[name] = cats
            else:
                values = col.to_numpy(dtype=np.float64)
                self._check_finite(values, name, np.arange(len(values)))
                std = float(values.std())
                self.numeric_[name] = (float(values.mean()), std if std > 0 else 1.0)
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
                try:
                    values = col.to_numpy(dtype=np.float64)
                except (TypeError, ValueError):
                    raise ValueError(
                        f"Column {name!r} was numeric in training but holds non-numeric values here."
                    ) from None
                self._check_finite(values, name, rows)
                parts.append(((values - mean) / std)[:, None])
            else:
                cats = self.categorical_[name]
                as_str = col.astype(str).to_numpy()
                parts.append((as_str[:, None] == np.asarray(cats, dtype=object)[None, :]).astype(np.float64))
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
        }

    @classmethod
    def from_dict(cls, d: dict) -> "TabularPreprocessor":
        version = d.get("format_version")
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise ValueError(
                f"Preprocessor format version {version!r} is newer than this dagmm supports "
                f"({FORMAT_VERSION}); upgrade dagmm."
            )
        pre = cls(d.get("columns"), d.get("exclude"), d.get("label_column"))
        pre.feature_columns_ = list(d["feature_columns"])
        pre.numeric_ = {k: (float(v[0]), float(v[1])) for k, v in d["numeric"].items()}
        pre.categorical_ = {k: [str(c) for c in v] for k, v in d["categorical"].items()}
        return pre

    def save(self, path: str) -> None:
        with open(path, "w", encoding="utf-8") as fh:
            json.dump(self.to_dict(), fh, indent=2)

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
    def _check_finite(values: np.ndarray, name: str, rows: np.ndarray) -> None:
        bad = ~np.isfinite(values)
        if bad.any():
            where = rows[bad]
            shown = ", ".join(str(int(r)) for r in where[:10]) + (", ..." if where.size > 10 else "")
            raise ValueError(f"Column {name!r} has NaN or infinite values in {where.size} row(s): {shown}.")
