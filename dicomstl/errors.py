"""The one exception family for problems a user can act on.

Messages are shown to users as they are: they name counts, series descriptions and sizes,
never patient data or file-system paths.
"""


class ConversionError(Exception):
    """A conversion cannot go on because of its input or options; the message says why."""


class NoImagesError(ConversionError):
    """The input holds no DICOM image that can form a volume."""


class ArchiveError(ConversionError):
    """An uploaded archive is unreadable, unsafe or too large to unpack."""


class SeriesChoiceError(ConversionError):
    """The input holds several series and none was chosen, or the chosen one is absent.

    ``choices`` lists the usable series (``SeriesStack.as_choice``) when the user must pick.
    """

    def __init__(self, message: str, choices: list[dict] | None = None):
        super().__init__(message)
        self.choices = choices or []


class SeriesGeometryError(ConversionError):
    """A series' slices do not form one consistent volume."""


class DecodeError(ConversionError):
    """Pixel data could not be decoded (truncated file, unsupported transfer syntax)."""


class EmptySurfaceError(ConversionError):
    """No voxel passes the threshold, or island removal left nothing."""


class ConfigError(Exception):
    """A setting in the environment is invalid; the message names the variable."""
