import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from shared.io.artifact import ArtifactError, load_component, save_component
from shared.io.atomic import atomic_path
from shared.io.nifti import NiftiError, read_header, read_nifti, write_case, write_nifti
from shared.io.preview import axial_image, coronal_image, save_preview

AFFINE = np.array([[3.0, 0, 0, -190.5], [0, 3.0, 0, -180.0], [0, 0, 5.0, -197.5], [0, 0, 0, 1]])


def _volume(shape=(20, 16, 10)):
    ct = np.full(shape, -1000, np.int16)
    lab = np.zeros(shape, np.uint8)
    lab[14:18, 6:10, 3:7] = 4  # "liver" at large x = patient's right
    lab[2:5, 4:8, 3:7] = 1  # "spleen" at small x = patient's left
    ct[lab > 0] = 60
    return ct, lab


def test_write_read_round_trip_keeps_geometry(tmp_path):
    ct, lab = _volume()
    write_case(tmp_path / "ct.nii.gz", tmp_path / "lab.nii.gz", ct, lab, AFFINE)
    arr, aff = read_nifti(tmp_path / "ct.nii.gz")
    assert arr.dtype == np.int16 and np.array_equal(arr, ct)
    np.testing.assert_allclose(aff, AFFINE)
    shape, aff2 = read_header(tmp_path / "lab.nii.gz")
    assert shape == lab.shape and np.allclose(aff2, AFFINE)


def test_nibabel_reads_liver_on_patient_right(tmp_path):
    """Independent reader: world x (RAS) of the liver centroid > spleen centroid."""
    ct, lab = _volume()
    write_case(tmp_path / "ct.nii.gz", tmp_path / "lab.nii.gz", ct, lab, AFFINE)
    img = nib.load(tmp_path / "lab.nii.gz")
    data = np.asarray(img.dataobj)
    assert img.get_data_dtype() == np.uint8
    assert nib.aff2axcodes(img.affine) == ("R", "A", "S")
    assert int(img.header["sform_code"]) > 0 and int(img.header["qform_code"]) > 0
    world = lambda k: nib.affines.apply_affine(img.affine, np.argwhere(data == k)).mean(0)  # noqa
    assert world(4)[0] > world(1)[0]
    np.testing.assert_allclose(img.header.get_zooms(), (3.0, 3.0, 5.0))


def test_oblique_lps_style_affine_round_trips(tmp_path):
    rot = np.array([[0.0, -1, 0], [1, 0, 0], [0, 0, 1]]) @ np.diag([2.0, 2.5, 4.0])
    affine = np.eye(4)
    affine[:3, :3], affine[:3, 3] = rot, [10.0, -20.0, 30.0]
    write_nifti(tmp_path / "x.nii", np.arange(24, dtype=np.int16).reshape(2, 3, 4), affine)
    np.testing.assert_allclose(nib.load(tmp_path / "x.nii").affine, affine, atol=1e-5)
    np.testing.assert_allclose(read_nifti(tmp_path / "x.nii")[1], affine, atol=1e-5)


@pytest.mark.parametrize("bad", ["missing", "corrupt", "4d"])
def test_bad_nifti_errors_name_the_file(tmp_path, bad):
    path = tmp_path / f"{bad}.nii.gz"
    if bad == "corrupt":
        path.write_bytes(b"not a nifti at all")
    elif bad == "4d":
        nib.save(nib.Nifti1Image(np.zeros((2, 2, 2, 2), np.int16), np.eye(4)), path)
    with pytest.raises(NiftiError, match=str(path.name)):
        read_nifti(path)


def test_zero_spacing_affine_is_rejected(tmp_path):
    with pytest.raises(NiftiError, match="spacing"):
        write_nifti(tmp_path / "z.nii.gz", np.zeros((2, 2, 2), np.int16), np.diag([1.0, 0.0, 1, 1]))
    assert not list(tmp_path.iterdir())


def test_interrupted_atomic_write_keeps_old_file(tmp_path):
    target = tmp_path / "a.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_preview_orientation_and_file(tmp_path):
    ct, lab = _volume()
    # displayed axial image: patient's right (large x) on the image's LEFT, anterior on top
    img = axial_image(lab, 5)
    cols_liver = np.nonzero(img == 4)[1]
    cols_spleen = np.nonzero(img == 1)[1]
    assert cols_liver.mean() < img.shape[1] / 2 < cols_spleen.mean()
    marker = np.zeros((4, 6, 3))
    marker[0, 5, 0] = 1  # most anterior (y = 5), patient's left (x = 0)
    assert axial_image(marker, 0)[0, -1] == 1
    cor = np.zeros((4, 6, 3))
    cor[3, 2, 2] = 1  # right, top slice
    assert coronal_image(cor, 2)[0, 0] == 1
    out = save_preview(tmp_path / "p.png", ct, lab, AFFINE, title="test")
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size[0] > 300


class _Tiny(torch.nn.Module):
    def __init__(self, width: int = 3):
        super().__init__()
        self.lin = torch.nn.Linear(width, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x)


def test_artifact_round_trip_without_pickle(tmp_path):
    m = _Tiny(4)
    stem = save_component(m, tmp_path / "tiny", {"width": 4}, {"scale": 0.5})
    assert (tmp_path / "tiny.safetensors").is_file() and (tmp_path / "tiny.yaml").is_file()
    # the class lives in tests/, outside the allowed prefixes by default
    with pytest.raises(ArtifactError, match="outside"):
        load_component(stem)
    m2 = load_component(stem, allowed_prefixes=("tests.",))
    assert m2.artifact_metadata == {"scale": 0.5}
    x = torch.randn(2, 4)
    assert torch.equal(m(x), m2(x))


def test_artifact_wrong_weights_named(tmp_path):
    save_component(_Tiny(4), tmp_path / "t", {"width": 4})
    spec = (tmp_path / "t.yaml").read_text().replace("width: 4", "width: 5")
    (tmp_path / "t.yaml").write_text(spec)
    with pytest.raises(ArtifactError, match="t.safetensors"):
        load_component(tmp_path / "t", allowed_prefixes=("tests.",))


def test_reorient_to_ras_keeps_world_coordinates():
    from shared.io.nifti import reorient_to_ras

    flip = np.diag([-2.0, 3.0, -4.0, 1.0])  # L, A, I axes
    flip[:3, 3] = [50, -10, 80]
    arr = np.random.default_rng(0).integers(0, 9, (4, 5, 6))
    out, aff = reorient_to_ras(arr, flip)
    assert nib.aff2axcodes(aff) == ("R", "A", "S") and out.shape == arr.shape
    for idx in [(0, 0, 0), (3, 4, 5), (1, 2, 3)]:
        world = flip @ np.array([*idx, 1.0])
        new_idx = np.linalg.solve(aff, world)[:3].round().astype(int)
        assert out[tuple(new_idx)] == arr[idx]


def test_atomic_write_has_normal_permissions(tmp_path):
    import os
    import stat

    from shared.io.atomic import write_text_atomic

    old = os.umask(0o022)
    try:
        write_text_atomic(tmp_path / "f.txt", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "f.txt").stat().st_mode) == 0o644
