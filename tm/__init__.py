"""TM_MAD actions for the block-storage drivers (one module per action in ``tm.actions``);
the executables oned runs are ``tm/<driver>/<action>``."""
