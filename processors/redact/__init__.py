from halod.processors.redact.factory import FACTORY

__all__ = ["FACTORY"]
