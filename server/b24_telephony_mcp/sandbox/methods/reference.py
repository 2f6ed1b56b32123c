"""voximplant.tts.voices.get and voximplant.url.get: reference data, no permission check in source."""

from __future__ import annotations

from typing import Any

from ..calls import Caller, Params
from ..state import Method, PortalState, method_table

#: Tts\Language::getList() as the docs show it (voice id -> name).
TTS_VOICES: dict[str, str] = {
    "auenglishfemale": "Australian English (Female) (Amazon)",
    "brportuguesefemale": "Brazilian Portuguese (Female) (Amazon)",
    "caenglishfemale": "Canadian English (Female) (Default)",
    "cafrenchfemale": "Canadian French (Female) (Amazon)",
    "cafrenchmale": "Canadian French (Male) (Amazon)",
    "chchinesefemale": "Chinese (Female) (Default)",
    "chchinesemale": "Chinese (Male) (Default)",
    "eurcatalanfemale": "Catalan (Female) (Default)",
    "eurczechfemale": "Czech (Female) (Default)",
    "eurdanishfemale": "Danish (Female) (Default)",
    "eurdutchfemale": "Dutch (Female) (Default)",
    "eurfinnishfemale": "Finnish (Female) (Default)",
    "eurfrenchfemale": "French (Female) (Amazon)",
    "eurfrenchmale": "French (Male) (Amazon)",
    "eurgermanfemale": "German (Female) (Default)",
    "eurgermanmale": "German (Male) (Default)",
    "euritalianfemale": "Italian (Female) (Default)",
    "euritalianmale": "Italian (Male) (Default)",
    "eurnorwegianfemale": "Norwegian (Female) (Default)",
    "eurpolishfemale": "Polish (Female) (Default)",
    "eurportuguesefemale": "Portuguese (Female) (Default)",
    "eurportuguesemale": "Portuguese (Male) (Default)",
    "eurspanishfemale": "Spanish (Female) (Default)",
    "eurspanishmale": "Spanish (Male) (Default)",
    "eurturkishfemale": "Turkish (Female) (Default)",
    "eurturkishmale": "Turkish (Male) (Default)",
    "hkchinesefemale": "Hong Kong Cantonese (Female) (Default)",
    "huhungarianfemale": "Hungarian (Female) (Default)",
    "jpjapanesefemale": "Japanese (Female) (Default)",
    "jpjapanesemale": "Japanese (Male) (Default)",
    "krkoreanfemale": "Korean (Female) (Default)",
    "krkoreanmale": "Korean (Male) (Default)",
    "usinternalfemale": "English (Female) (Default)",
    "usinternalmale": "English (Male) (Default)",
    "swswedishfemale": "Swedish (Female) (Default)",
    "twchinesefemale": "Taiwanese Chinese (Female) (Default)",
    "ukenglishfemale": "English (Female) (Amazon)",
    "ukenglishmale": "English (Male) (Amazon)",
    "usenglishfemale": "American English (Female) (Default)",
    "usenglishmale": "American English (Male) (Default)",
    "usspanishfemale": "American Spanish (Female) (Amazon)",
    "usspanishmale": "American Spanish (Male) (Amazon)",
}


def tts_voices_get(portal: PortalState, params: Params, caller: Caller) -> dict[str, str]:
    return dict(TTS_VOICES)


def url_get(portal: PortalState, params: Params, caller: Caller) -> dict[str, Any]:
    """urlGet(): the portal address plus the telephony public folder (/telephony/)."""
    telephony = f"{portal.base_url}/telephony/"
    return {
        "detail_statistics": f"{telephony}detail.php",
        "buy_connector": f"{portal.base_url}/settings/license_phone_sip.php",
        "edit_config": f"{telephony}edit.php?ID=#CONFIG_ID#",
        "lines": f"{telephony}lines.php",
    }


METHODS = method_table(
    {
        "voximplant.tts.voices.get": Method(tts_voices_get),
        "voximplant.url.get": Method(url_get),
    }
)
