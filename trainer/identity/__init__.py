"""The identity product: self-cognition data (`generate`) and the fine-tune report that measures it (`report`)."""
from .generate import FILES, GENERAL_DATA, OLD_NAMES, IdentitySpec, write_identity_dataset

__all__ = ["FILES", "GENERAL_DATA", "OLD_NAMES", "IdentitySpec", "write_identity_dataset"]
