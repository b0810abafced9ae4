"""Resume compares an experiment's recorded ``Spec.sha256()`` with its spec's today: a new
setting, a moved section or a changed default must leave every shipped spec's hash as it was
(a key added since goes into ``validate.HASH_NEUTRAL`` at its neutral value).

The hashes below were taken at 946a5a2. ``examples/diabetes_regression.yaml`` is left out: its
resolved ``data.path`` is absolute, so its hash depends on where the clone lives.
"""

from pathlib import Path

import pytest

from raytune_opt.spec import load_spec

ROOT = Path(__file__).resolve().parents[2] / "search_spaces"
PINNED = {
    "cifar100_resnet50_deepspeed.yaml": "0ce5619dd9fd1749b6aa78272b371674699625881cea9cfb24aa98cdc2c24fe8",
    "cifar10_resnet18.yaml": "e6841cb4b973610bb6410e2eb68b388f65c918d036c90a96715eef29d9c7c8d4",
    "digits_cnn.yaml": "808fd163783cab2f9b95f3c05a78271bf2b0bc82fd0908c589ff4ed8a762b674",
    "digits_conditional.yaml": "e9483d980eed963d6fab0841540b318e4a35f858c0f333d16c27c87968435c09",
    "digits_deepspeed.yaml": "1e5868f66a850a0504fcf764883aa2be742b2781935e7c1e335be90ed8e7dee2",
    "digits_pareto.yaml": "d34bab7aa73041a116aa21c8b1d92ffc753dffdb44f9f0138fe412dcadae634c",
    "examples/digits_user_model.yaml": "299df665f71582fc75154e7a6fcee352985ad7f28fce665d8981cf9804871f5d",
    "examples/text_user_data.yaml": "66903629a3fcbf3f829f424e3216388bf1ea6a1833f6813ccbb14e683a62e378",
    "imagefolder_mobilenetv3.yaml": "db1403f140dbe7416e2777f41b5769627c71bc8d7606c9ccc45c9bc62a26fba1",
    "mnist1d_cnn.yaml": "1027d722cec4a5f56a5c8179528de160ee27be4413bea60c4b01cc94f9cc87d4",
}


@pytest.mark.parametrize("name", sorted(PINNED))
def test_every_shipped_spec_hashes_as_it_did(name):
    assert load_spec(ROOT / name).sha256() == PINNED[name], (
        f"{name}: Spec.sha256() changed, so experiments run with it no longer resume; put the new key "
        "in raytune_opt.spec.validate.HASH_NEUTRAL at its neutral value")
