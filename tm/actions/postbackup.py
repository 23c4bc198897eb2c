"""POSTBACKUP ``host:system_dir disk_ids deploy_id bjid vmid sys_dsid`` (stdin: the ``<VM>``, maybe
followed by ``<BACKUP_RESULT>``): delete the backup snapshots and the backup directory (see tm/backup.py)."""

from ..backup import run

__all__ = ["run"]
