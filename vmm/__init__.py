"""VMM overrides oned runs locally (``VM_MAD ... -l deploy=deploy-tweaks,...``): the deploy
hook that applies the tweak rules, and the storage-aware save/restore/migrate/attach/
snapshot actions. Executables live in ``vmm/kvm/<name>``; the code in ``vmm.actions``."""
