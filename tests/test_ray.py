"""Ray Data encoding on a local 2-CPU Ray: same vectors and the same index as the local path."""

import numpy as np
import pytest
import ray  # a hard dependency: imported, never skipped

from searchr3.index import Index
from searchr3.ray_encode import encode_with_ray

TEXTS = [
    "the cat sat on the mat",
    "paris is the capital of france",
    "proteins fold into shapes",
    "rain falls from clouds",
    "the heart pumps blood through the body",
    "a search engine ranks documents",
]


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_ray_build_equals_local_build(local_ray, tiny_model_dir, tmp_path, cli):
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(TEXTS * 3) + "\n")
    common = ["--corpus", str(corpus), "--model", str(tiny_model_dir), "--max-length", "400", "--fp32", "--batch-size", "4"]
    out = cli("index", "build", *common, "--out", tmp_path / "local")
    assert out.code == 0, out.err[-2000:]
    out = cli("index", "build", *common, "--out", tmp_path / "ray", "--ray", "--ray-actors", "2")
    assert out.code == 0, out.err[-2000:]
    local, distributed = Index.load(tmp_path / "local"), Index.load(tmp_path / "ray")
    diff = float(np.abs(local.vectors() - distributed.vectors()).max())
    print(f"ray vs local: max abs diff {diff:.2e}")
    assert diff < 1e-5
    assert [d.id for d in local.docs] == [
        d.id for d in distributed.docs
    ] and local.meta.fingerprint == distributed.meta.fingerprint


def test_encode_with_ray_errors(local_ray, tiny_model_dir):
    with pytest.raises(ValueError, match="no texts"):
        encode_with_ray([], str(tiny_model_dir))
    with pytest.raises(ValueError, match="concurrency"):
        encode_with_ray(["a"], str(tiny_model_dir), concurrency=0)
