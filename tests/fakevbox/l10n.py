"""Translated VBoxManage output (VirtualBox >= 7.0 loads translations; Russian ships).

GUESS, all of it: no translated output was found in a source, so the Russian texts below are
our own minimal renderings of the English messages the fake prints; only the mechanism is
from VirtualBox's sources (VirtualBoxTranslator::i_loadLanguage(NULL) takes the language
from the process locale: LC_ALL, then LC_MESSAGES, then LANG; "C"/"POSIX"/"en" mean English).

Two sides translate separately (also a guess from how COM errors travel): messages made by
VBoxManage itself (the "Details:"/"Context:" labels, startvm and createvm lines) follow the
caller's locale; messages made by the VirtualBox service (VBoxSVC: "Could not find a
registered machine", lock and NAT-rule errors) follow the locale VBoxSVC started with,
i.e. the first client's (the fake remembers it; FAKEVBOX_SVC_LANG overrides it). So a
``LANG=C.UTF-8`` VBoxManage can still print Russian service errors: b2dkit must match the
untranslated parts (error codes, ``Context:`` call names) too.
"""

import os
import re

# (English pattern, Russian replacement, side)
_MESSAGES = [
    (r"Could not find a registered machine named '([^']*)'",
     r"Не удалось найти зарегистрированную машину с именем '\1'", "svc"),
    (r"The machine '([^']*)' is already locked for a session \(or being unlocked\)",
     r"Машина '\1' уже заблокирована сеансом (или разблокируется)", "svc"),
    (r"The machine '([^']*)' is already locked by a session \(or being locked or unlocked\)",
     r"Машина '\1' уже заблокирована сеансом (или блокируется либо разблокируется)", "svc"),
    (r"A NAT rule of this name already exists", "Правило NAT с таким именем уже существует", "svc"),
    (r"A NAT rule for this host port and this host IP already exists",
     "Правило NAT для этого порта и адреса хоста уже существует", "svc"),
    (r"Machine '([^']*)' is not currently running", r"Машина '\1' сейчас не запущена", "svc"),
    (r"Cannot register the hard disk '([^']*)' \{([^}]*)\} because a hard disk '([^']*)' with UUID "
     r"\{([^}]*)\} already exists",
     r"Невозможно зарегистрировать жёсткий диск '\1' {\2}, так как жёсткий диск '\3' с UUID {\4} "
     r"уже существует", "svc"),
    (r"Details: code ", "Подробности: код ", "client"),
    (r", component ", ", компонент ", "client"),
    (r", interface ", ", интерфейс ", "client"),
    (r", callee ", ", вызываемый ", "client"),
    (r"Context: ", "Контекст: ", "client"),
    (r" at line (\d+) of file ", r" в строке \1 файла ", "client"),
    (r'Waiting for VM "([^"]*)" to power on\.\.\.', r'Ожидание включения ВМ "\1"...', "client"),
    (r'VM "([^"]*)" has been successfully started\.', r'ВМ "\1" успешно запущена.', "client"),
    (r"Virtual machine '([^']*)' is created and registered\.",
     r"Виртуальная машина '\1' создана и зарегистрирована.", "client"),
    (r"Settings file: ", "Файл настроек: ", "client"),
]
_COMPILED = [(re.compile(p), r, side) for p, r, side in _MESSAGES]


def process_language() -> str:
    """'ru' or 'en' from LC_ALL > LC_MESSAGES > LANG, the way a POSIX process resolves it."""
    for var in ("LC_ALL", "LC_MESSAGES", "LANG"):
        value = os.environ.get(var)
        if value:
            return "ru" if value.lower().startswith("ru") else "en"
    return "en"


def translate(text: str, client: str, service: str) -> str:
    for pattern, russian, side in _COMPILED:
        if (client if side == "client" else service) == "ru":
            text = pattern.sub(russian, text)
    return text
