"""main.py's own behaviour; whole runs through the CLI are in test_faults.py and test_train.py."""

import pytest

from alexnet_jax import main


def test_a_replaced_field_on_the_command_line_names_its_successor(capsys):
    with pytest.raises(SystemExit) as info:
        main.refuse_renamed_fields(
            ["--config=configs/alexnet.py", "--config.model.conv1_matmul=False"]
        )
    assert info.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --config.model.conv1_matmul was replaced by config.model.kernels")
    assert "\n" not in err
    main.refuse_renamed_fields(["--config.model.kernels=cpu", "--workdir=/tmp/x"])  # no exit
