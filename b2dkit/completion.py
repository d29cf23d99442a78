"""Shell completion for ``b2dkit``: task names and flags, and the values a flag takes.

Invoke completes task names and flags only, and its bash script hands over the command
line joined by spaces, which loses the word being completed when it is empty.  b2dkit's
script passes the words before the cursor and the word under it, shell-quoted, through
invoke's own ``--complete`` flag; :func:`candidates` answers with profile names for
``--profile``, VM names for ``--name``, providers, the forwards a VM has for
``vm.unforward``, and task names or flags otherwise.  No candidates means "a file name"
(``-o default``), which is what ``--iso``, ``--from`` or ``--profile ./team.yaml`` want.

``b2dkit --print-completion-script bash`` (or ``zsh``) prints the script:
``eval "$(b2dkit --print-completion-script bash)"`` in ~/.bashrc.
"""

import shlex
from typing import Dict, Iterable, List, Optional

from invoke import Collection, Exit, Program
from invoke.parser import ParserContext

BASH = r"""# b2dkit shell completion: task names, flags and their values (profiles, VMs, forwards).
# bash: eval "$(b2dkit --print-completion-script bash)"
_b2dkit_complete() {
    local IFS=$'\n' line
    line=$(printf '%q ' "${COMP_WORDS[@]:0:COMP_CWORD}")$(printf '%q' "$2")
    COMPREPLY=( $("$1" --complete -- "$line" 2>/dev/null) )
}
complete -o default -F _b2dkit_complete b2dkit
"""
ZSH = "# zsh: eval \"$(b2dkit --print-completion-script zsh)\"\nautoload -U +X bashcompinit && bashcompinit\n" + BASH
SCRIPTS = {"bash": BASH, "zsh": ZSH}
LIST_FORMATS = ("flat", "nested", "json")


class CompletingProgram(Program):
    """invoke's Program with b2dkit's completion script and completer in place of invoke's."""

    def parse_core_args(self) -> None:
        super().parse_core_args()
        shell = self.args["print-completion-script"].value
        if shell:
            if shell not in SCRIPTS:
                raise Exit(f"b2dkit: error: no completion script for {shell!r}: use {' or '.join(SCRIPTS)}", code=2)
            print(SCRIPTS[shell], end="")
            raise Exit

    def parse_cleanup(self) -> None:
        if self.args.complete.value:
            for word in candidates_for_line(self.core.remainder, self.collection, self.initial_context):
                print(word)
            raise Exit
        super().parse_cleanup()


def candidates_for_line(line: str, collection: Collection, core_context: ParserContext) -> List[str]:
    """The completer behind ``--complete``: ``line`` is the shell-quoted words, the last one
    being the word under the cursor (possibly empty)."""
    try:
        words = shlex.split(line)
    except ValueError:  # an unfinished quote: nothing sensible to offer
        return []
    if not words:
        return []
    if line.endswith(" ") or not line.strip():
        words.append("")
    return candidates(words[1:-1], words[-1], collection, core_context)


def candidates(before: List[str], current: str, collection: Collection, core_context: ParserContext) -> List[str]:
    """What may stand at ``current``, given the words ``before`` it (program name excluded)."""
    contexts: Dict[str, ParserContext] = {}
    for ctx in collection.to_contexts():
        for name in (ctx.name, *ctx.aliases):
            if name:  # a task's context always has one; invoke types it Optional
                contexts[name] = ctx
    # Walk the words: which task we are in, which flag wants a value, how many positionals.
    task, ctx, wanting, positionals = None, core_context, None, 0
    for word in before:
        if word == "=":  # bash splits --flag=value at the '='
            continue
        if wanting is not None:
            wanting = None
            continue
        if word.startswith("-"):
            flag, eq, _ = word.partition("=")
            arg = ctx.flags.get(flag) or core_context.flags.get(flag)
            if arg is not None and arg.takes_value and not eq and not getattr(arg, "optional", False):
                wanting = arg
            elif arg is not None and getattr(arg, "optional", False) and not eq:
                wanting = arg  # --help [TASK]
            continue
        if word in contexts:
            task, ctx, positionals = word, contexts[word], 0
            continue
        positionals += 1
    if current.startswith("--") and "=" in current:  # a shell that did not split at '='
        flag, _, partial = current.partition("=")
        arg = ctx.flags.get(flag) or core_context.flags.get(flag)
        if arg is None:
            return []
        return [f"{flag}={value}" for value in _values(task, arg.name, partial, before)]
    if wanting is not None:
        return list(_values(task, wanting.name, current, before))
    if current.startswith("-"):
        names = list(ctx.flags) if task else []
        names += [flag for flag in core_context.flags if not task or flag in ("--help",)]
        return sorted({name for name in names if name.startswith(current)})
    if task is not None and positionals < len(ctx.positional_args):  # vm.unforward SPEC, iso.show ISO
        return list(_values(task, ctx.positional_args[positionals].name, current, before))
    return sorted(name for name in contexts if name.startswith(current))


def _values(task: Optional[str], arg: Optional[str], partial: str, before: List[str]) -> Iterable[str]:
    """Values of argument ``arg`` of ``task`` that start with ``partial``."""
    found: List[str] = []
    try:
        found = list(_lookup(task, arg, partial, before))
    except Exception:  # completion must never print a traceback into a prompt
        return []
    return sorted({value for value in found if value.startswith(partial)})


def _lookup(task: Optional[str], arg: Optional[str], partial: str, before: List[str]) -> Iterable[str]:
    if arg == "profile":
        if partial.startswith((".", "/", "~")) or "/" in partial:
            return []  # a path: the shell completes file names
        from . import profile

        return [name for name, _ in profile.available()]
    if arg == "name":
        from . import machines

        return [machine.name for machine in machines.all_machines()]
    if arg == "provider":
        from .profile import PROVIDER_CHOICES

        return list(PROVIDER_CHOICES)
    if arg == "help":
        from .tasks import ns

        return list(ns.task_names)
    if arg == "print-completion-script" or arg == "print_completion_script":
        return list(SCRIPTS)
    if arg == "list-format" or arg == "list_format":
        return list(LIST_FORMATS)
    if task == "vm.unforward" and arg == "spec":
        return _forwards_in_use(before)
    return []


def _forwards_in_use(before: List[str]) -> List[str]:
    """``8000``, ``5353/udp``: what ``vm.unforward`` accepts for the VM's current forwards."""
    from . import forwards as fw, lifecycle, machines

    name = _flag_value(before, "--name")
    rules = lifecycle.provider_for(machines.resolve(name or None)).forwards()
    return [fw.port_spec(rule.host_port, rule.proto) for rule in rules]


def _flag_value(before: List[str], flag: str) -> Optional[str]:
    words = [w for w in before if w != "="]
    for index, word in enumerate(words):
        if word.startswith(flag + "="):
            return word.split("=", 1)[1]
        if word == flag and index + 1 < len(words):
            return words[index + 1]
    return None
