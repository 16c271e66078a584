"""Text and Markdown tables line up and keep every cell."""

from compressor.tables import markdown_table, text_table


def test_text_table_aligns_text_left_and_numbers_right():
    table = text_table(["name", "params"], [["lenet5", "431,080"], ["resnet20", "269,722"], ["x", "1"]], title="zoo",
                       left_columns=1)
    lines = table.splitlines()
    assert lines[0] == "zoo"
    assert lines[2] == "--------  -------"
    assert lines[3] == "lenet5    431,080"
    assert lines[5] == "x               1"


def test_markdown_table():
    assert markdown_table(["a", "b"], [[1, "x"]]) == "| a | b |\n|---|---|\n| 1 | x |"
