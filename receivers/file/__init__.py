from halod.receivers.file.factory import FACTORY

__all__ = ["FACTORY"]
