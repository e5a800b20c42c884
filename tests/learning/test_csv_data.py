"""CSV loading: label encodings, and one-line errors that name the row, column and value."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedhive.errors import DataError
from fedhive.learning.csv_data import load_csv


def write(tmp_path: Path, text: str, name: str = "data.csv") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_string_labels_map_to_sorted_class_names(tmp_path: Path) -> None:
    path = write(tmp_path, "a,species,b\n1.5,virginica,2\n3,setosa,4\n5,versicolor,6\n7,setosa,8\n")
    ds = load_csv(path, "species")
    assert ds.class_names == ("setosa", "versicolor", "virginica")
    assert ds.y.tolist() == [2, 0, 1, 0]
    assert ds.feature_names == ("a", "b")
    np.testing.assert_array_equal(ds.x, np.array([[1.5, 2], [3, 4], [5, 6], [7, 8]], dtype=np.float32))
    assert ds.x.dtype == np.float32 and ds.y.dtype == np.int64


def test_integer_labels_sort_numerically(tmp_path: Path) -> None:
    path = write(tmp_path, "x,label\n1,10\n2,2\n3,10\n4,2\n5,7\n")
    ds = load_csv(path, "label")
    assert ds.class_names == ("2", "7", "10")
    assert ds.y.tolist() == [2, 0, 2, 0, 1]


def test_bom_blank_lines_and_padded_header_are_accepted(tmp_path: Path) -> None:
    path = tmp_path / "excel.csv"
    path.write_bytes("\ufeff a , label \r\n1,x\r\n\r\n2,y\r\n\r\n".encode())
    ds = load_csv(path, "label")
    assert ds.x[:, 0].tolist() == [1.0, 2.0] and ds.feature_names == ("a",)


def test_many_rows_are_converted_in_chunks(tmp_path: Path) -> None:
    rows = "\n".join(f"{i},{i * 0.5},{i % 3}" for i in range(20_000))
    ds = load_csv(write(tmp_path, "a,b,c\n" + rows + "\n"), "c")
    assert ds.x.shape == (20_000, 2)
    assert ds.x[19_999].tolist() == [19_999.0, 9_999.5]
    assert ds.y[:4].tolist() == [0, 1, 2, 0]


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"not found: .*nope\.csv"):
        load_csv(tmp_path / "nope.csv", "y")


def test_directory_is_unreadable(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="cannot read CSV file"):
        load_csv(tmp_path, "y")


def test_empty_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="empty"):
        load_csv(write(tmp_path, ""), "y")


def test_header_without_rows(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no data rows"):
        load_csv(write(tmp_path, "a,y\n"), "y")


def test_missing_label_column_lists_the_columns(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"label column 'target' is missing .*columns: sepal, petal, species"):
        load_csv(write(tmp_path, "sepal,petal,species\n1,2,a\n"), "target")


def test_non_numeric_feature_names_row_column_and_value(tmp_path: Path) -> None:
    path = write(tmp_path, "a,b,y\n1,2,x\n3,4,y\n5,oops,x\n")
    with pytest.raises(DataError, match=r"^row 4, column 'b': 'oops' is not a number$"):
        load_csv(path, "y")


def test_wrong_number_of_fields_names_the_row(tmp_path: Path) -> None:
    path = write(tmp_path, "a,b,y\n1,2,x\n3,4,5,y\n")
    with pytest.raises(DataError, match=r"^row 3 has 4 fields, but the header has 3$"):
        load_csv(path, "y")


def test_empty_feature_names_row_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, "a,b,y\n1,2,x\n3,,y\n")
    with pytest.raises(DataError, match=r"^row 3, column 'b': the value is empty"):
        load_csv(path, "y")


def test_nan_feature_names_row_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, "a,b,y\n1,2,x\nNaN,4,y\n")
    with pytest.raises(DataError, match=r"^row 3, column 'a': the value is NaN"):
        load_csv(path, "y")


def test_infinite_and_float32_overflow_values_are_refused(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"^row 2, column 'b': 'inf' is infinite"):
        load_csv(write(tmp_path, "a,b,y\n1,inf,x\n2,3,y\n"), "y")
    with pytest.raises(DataError, match=r"^row 3, column 'a': '1e39' is infinite or too large"):
        load_csv(write(tmp_path, "a,b,y\n1,2,x\n1e39,3,y\n"), "y")


def test_error_in_a_later_chunk_names_the_right_row(tmp_path: Path) -> None:
    rows = [f"{i},{i % 2}" for i in range(10_000)]
    rows[9_000] = "bad,1"
    with pytest.raises(DataError, match=r"^row 9002, column 'a': 'bad' is not a number$"):
        load_csv(write(tmp_path, "a,y\n" + "\n".join(rows) + "\n"), "y")


def test_empty_label_names_row(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"^row 3, column 'y': the label is empty$"):
        load_csv(write(tmp_path, "a,y\n1,x\n2,\n"), "y")


def test_single_class_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="only 1 class"):
        load_csv(write(tmp_path, "a,y\n1,x\n2,x\n"), "y")


def test_label_only_file_has_no_features(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no features"):
        load_csv(write(tmp_path, "y\nx\nz\n"), "y")


def test_file_over_the_size_limit_is_refused_before_reading(tmp_path: Path) -> None:
    path = write(tmp_path, "a,y\n" + "1,x\n2,y\n" * 100)
    with pytest.raises(DataError, match=r"is \d+ bytes, over the limit of 100 bytes"):
        load_csv(path, "y", max_bytes=100)
    assert len(load_csv(path, "y", max_bytes=10_000)) == 200


def test_non_utf8_file(tmp_path: Path) -> None:
    path = tmp_path / "latin1.csv"
    path.write_bytes("a,y\n1,caf\xe9\n2,b\n".encode("latin-1"))
    with pytest.raises(DataError, match="not UTF-8"):
        load_csv(path, "y")


def test_errors_are_one_line(tmp_path: Path) -> None:
    wide = ",".join(f"c{i}" for i in range(100))
    with pytest.raises(DataError) as info:
        load_csv(write(tmp_path, wide + "\n" + ",".join("1" * 100) + "\n"), "label")
    assert "\n" not in str(info.value) and "and 80 more" in str(info.value)
