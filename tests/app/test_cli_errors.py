"""Every command turns a FeatureStoreError into one line and an exit code, never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from featurestore import errors


def test_every_error_is_a_featurestore_error_and_its_builtin() -> None:
    builtin_of = {
        errors.OptionError: ValueError,
        errors.SourceError: ValueError,
        errors.DecodeError: ValueError,
        errors.BackboneError: ValueError,
        errors.WeightsUnavailableError: ValueError,
        errors.ExtractError: RuntimeError,
        errors.StoreError: RuntimeError,
        errors.StoreCorruptError: RuntimeError,
        errors.NotAStoreError: ValueError,
        errors.StoreNameError: ValueError,
        errors.MissingRowsError: KeyError,
        errors.HeadError: ValueError,
        errors.HeadIntegrityError: ValueError,
        errors.HeadMismatchError: ValueError,
        errors.OutputError: OSError,
    }
    declared = {
        getattr(errors, n)
        for n in errors.__all__
        if getattr(errors, n) is not errors.FeatureStoreError
    }
    assert declared == set(builtin_of)
    for cls, builtin in builtin_of.items():
        assert issubclass(cls, errors.FeatureStoreError) and issubclass(cls, builtin), cls


def test_missing_rows_read_as_a_sentence_not_a_quoted_key() -> None:
    assert str(errors.MissingRowsError("3 of 5 keys are missing")) == "3 of 5 keys are missing"


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory, make_images) -> Path:
    root = tmp_path_factory.mktemp("imgs")
    make_images(root, n=4)
    return root


def _cases(folder: Path, tmp: Path) -> dict[str, list[str]]:
    (tmp / "not_a_head.joblib").write_bytes(b"\x00random bytes")
    return {
        "no such source": ["extract", str(tmp / "nope"), "-b", "resnet18"],
        "unknown backbone": ["extract", str(folder), "-b", "resnet1800"],
        "missing weights file": ["extract", str(folder), "-b", "resnet18", "--weights", "/no.pth"],
        "an input size the backbone cannot take": [
            "extract", str(folder), "-b", "vit_b_16", "--weights", "none", "--input-size", "64",
        ],
        "fp16 on a CPU": [
            "extract", str(folder), "-b", "resnet18", "--weights", "none", "--precision", "fp16",
            "--device", "cpu",
        ],
        "unknown backbone for nodes": ["nodes", "resnet1800"],
        "a head that does not exist": ["predict", str(folder), "--head", str(tmp / "h.joblib")],
        "a head without sidecar": [
            "predict", str(folder), "--head", str(tmp / "not_a_head.joblib"),
        ],
        "a bad anchor": [
            "sweep", str(folder), "--no-pixels", "-b", "resnet18", "--anchor", "x=high",
            "--out", str(tmp / "r"),
        ],
    }  # fmt: skip


def test_each_failure_is_one_line_on_stderr_with_exit_1(
    folder: Path, tmp_path: Path, run_cli
) -> None:
    cache = ["--cache-dir", str(tmp_path / "cache")]
    for name, args in _cases(folder, tmp_path).items():
        done = run_cli(*args, *(cache if args[0] in ("extract", "sweep") else []))
        err = done.stderr.decode()
        lines = [line for line in err.splitlines() if line.strip()]
        assert done.returncode == 1, (name, done.returncode, err)
        assert "Traceback" not in err, (name, err)
        assert len(lines) == 1 and lines[0].startswith("error: "), (name, err)


def test_a_reader_that_goes_away_ends_the_command_quietly() -> None:
    """`featurestore predict ... --out - | head`: stdout's reader closes the pipe; the command
    stops with the shell's SIGPIPE status (141), without an error line or a traceback."""
    import click
    from click.testing import CliRunner

    from featurestore.cli.group import EXIT_BROKEN_PIPE, _Commands

    @click.group(cls=_Commands)
    def group() -> None:
        pass

    @group.command()
    def write() -> None:
        click.echo("first line")
        raise BrokenPipeError(32, "Broken pipe")

    done = CliRunner().invoke(group, ["write"])
    assert done.exit_code == EXIT_BROKEN_PIPE == 141
    assert done.stderr == "" and isinstance(done.exception, SystemExit)
