"""Storage set-up for lr-study: a URL in, a shareable Optuna storage out. No side effects on import."""

from storage.storage import (DEFAULT_STORAGE, StorageError, check_writable, dashboard_command, hide_password, open_storage,
                             sqlite_path, storage_failure)

__all__ = ["DEFAULT_STORAGE", "StorageError", "check_writable", "dashboard_command", "hide_password", "open_storage",
           "sqlite_path", "storage_failure"]
