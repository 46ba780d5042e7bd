import pytest

from shared.labels import LabelTableError, default_labels, load_label_table


def test_default_table_matches_design():
    t = default_labels()
    assert t.num_classes == 12
    assert t.names[:4] == ["background", "spleen", "kidney_right", "kidney_left"]
    assert t["colorectal_tumor"] == 11 and t.tumor_ids == [11]
    assert len(set(t.colors())) == t.num_classes


@pytest.mark.parametrize(
    "text, match",
    [("classes:\n  - {id: 0, name: background}\n  - {id: 2, name: liver}\n", r"classes\[1\]\.id"),
     ("classes:\n  - {id: 0, name: liver}\n", "background"),
     ("classes:\n  - {id: 0, name: background}\n  - {id: 1}\n", "'name'"),
     ("foo: 1\n", "classes")],
)
def test_bad_tables_name_file_and_field(tmp_path, text, match):
    p = tmp_path / "labels.yaml"
    p.write_text(text)
    with pytest.raises(LabelTableError, match=match) as e:
        load_label_table(p)
    assert str(p) in str(e.value)
