"""The one parquet reader: every way an input table can be wrong is one line naming the file."""

from __future__ import annotations

import pyarrow as pa
import pytest

from mixlab.errors import InputError
from mixlab.tables import read_table, write_table


def test_a_folder_of_parquet_files_reads_as_one_table(tmp_path):
    write_table(pa.table({"a": [1, 2]}), tmp_path / "t" / "one.parquet")
    write_table(pa.table({"a": [3]}), tmp_path / "t" / "two.parquet")
    assert read_table(tmp_path / "t").column("a").to_pylist() == [1, 2, 3]
    assert read_table(tmp_path / "t", columns=["a"]).num_columns == 1


def test_a_truncated_file_names_the_file_and_the_fix(tmp_path):
    write_table(pa.table({"a": list(range(100))}), tmp_path / "t.parquet")
    data = (tmp_path / "t.parquet").read_bytes()
    (tmp_path / "t.parquet").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError) as err:
        read_table(tmp_path / "t.parquet", fix="make it with `mixlab mixtures sample`")
    message = str(err.value)
    assert message.startswith(f"{tmp_path / 't.parquet'}: not a readable parquet file")
    assert message.endswith("; make it with `mixlab mixtures sample`") and "\n" not in message


def test_missing_columns_and_zero_rows_are_worded(tmp_path):
    write_table(pa.table({"a": pa.array([], pa.int64())}), tmp_path / "empty.parquet")
    with pytest.raises(InputError, match=r"empty.parquet: column\(s\) 'b' missing \(found: a\)"):
        read_table(tmp_path / "empty.parquet", required=["b"])
    with pytest.raises(InputError, match=r"empty.parquet: has no rows"):
        read_table(tmp_path / "empty.parquet")
    assert read_table(tmp_path / "empty.parquet", allow_empty=True).num_rows == 0


def test_a_missing_path_or_a_folder_without_parquet_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="no such file or directory"):
        read_table(tmp_path / "absent.parquet")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no .parquet files found"):
        read_table(tmp_path / "empty")
