from halod.receivers.langfuse.factory import FACTORY

__all__ = ["FACTORY"]
