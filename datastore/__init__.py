"""Block storage for OpenNebula: the backend interface, its StorPool and LINSTOR
implementations, and the DS_MAD actions. (The executables oned runs live in
``datastore/<driver>/<action>``; the TM actions in the ``tm`` package.)"""
