from conftest import apply, deployment, vm_xml


def test_fixture_deployment_becomes_valid_after_normalisation(assert_valid):
    outcome = apply(deployment(), vm_xml())
    assert_valid(outcome.tree)
    assert outcome.report.normalized, "the two extra <devices> blocks must be merged"
