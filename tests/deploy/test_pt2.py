

@pytest.mark.slow
@pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++ to build the C++ loader")
def test_cpp_loader_runs_the_package(package, tmp_path):
    """scripts/pt2_cpp: a C++ program on torch::inductor::AOTIModelPackageLoader loads the package and gives the
    Python loader's outputs."""
    script = Path(__file__).parents[2] / "scripts" / "pt2_cpp" / "check_cpp_loader.py"
    done = subprocess.run(
        [sys.executable, str(script), str(package[0]), "--frames", "5", "--build-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    result = json.loads(done.stdout)
    assert (result["compiled"], result["ran"], result["matched"]) == (True, True, True), result
    assert set(result["max_rel_error"]) == set(OUTPUT_NAMES)
