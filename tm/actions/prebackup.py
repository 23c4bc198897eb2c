"""PREBACKUP ``host:system_dir disk_ids deploy_id bjid vmid sys_dsid`` (stdin: the ``<VM>``): full
backups of the listed disks as ``system_dir/backup/disk.<ID>.0`` (qcow2) from one group snapshot.
See tm/backup.py."""

from ..backup import run

__all__ = ["run"]
