"""A small Dockerfile reader for the image tests: instructions, stages, ARG defaults,
and the .dockerignore rules (last matching pattern wins, `!` re-includes)."""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case: FROM, RUN, COPY...
    args: str

    def exec_form(self) -> list[str] | None:
        """The JSON array of an exec-form instruction (after any --flags), else None."""
        text = self.args
        while text.startswith("--"):
            text = text.split(None, 1)[1] if " " in text else ""
        if self.keyword == "HEALTHCHECK":
            text = text.removeprefix("CMD").strip()
        if not text.startswith("["):
            return None
        value = json.loads(text)
        assert isinstance(value, list) and all(isinstance(v, str) for v in value)
        return value

    def flags(self) -> dict[str, str]:
        out = {}
        for word in shlex.split(self.args):
            if not word.startswith("--"):
                break
            name, _, value = word[2:].partition("=")
            out[name] = value
        return out


@dataclass
class Stage:
    image: str  # as written, ARGs substituted
    name: str
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]


def instructions(text: str) -> list[Instruction]:
    logical: list[str] = []
    current = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):  # a comment inside a continued instruction
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        logical.append(current + line)
        current = ""
    assert not current, "the Dockerfile ends inside a continued line"
    out = []
    for line in logical:
        keyword, _, args = line.partition(" ")
        out.append(Instruction(keyword.upper(), " ".join(args.split())))
    return out


def stages(text: str) -> tuple[dict[str, str], list[Stage]]:
    """The global ARG defaults and the stages, with ARGs substituted in FROM."""
    args: dict[str, str] = {}
    found: list[Stage] = []
    for instruction in instructions(text):
        if instruction.keyword == "FROM":
            words = instruction.args.split()
            image = re.sub(r"\$\{?(\w+)\}?", lambda m: args[m.group(1)], words[0])
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else ""
            found.append(Stage(image, name))
        elif found:
            found[-1].instructions.append(instruction)
        elif instruction.keyword == "ARG":
            name, _, default = instruction.args.partition("=")
            args[name] = default
    return args, found


def env_of(stage: Stage) -> dict[str, str]:
    env: dict[str, str] = {}
    for instruction in stage.all("ENV"):
        for word in shlex.split(instruction.args):
            name, _, value = word.partition("=")
            env[name] = value
    return env


def ignored(rules: list[str], path: str) -> bool:
    """Whether .dockerignore `rules` leave `path` (relative, '/'-separated) out."""
    verdict = False
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for rule in rules:
        negate = rule.startswith("!")
        pattern = rule.removeprefix("!").strip("/")
        pattern = pattern.removeprefix("**/")
        deep = rule.removeprefix("!").startswith("**/")
        for prefix in prefixes:
            candidates = [prefix, prefix.rsplit("/", 1)[-1]] if deep else [prefix]
            if any(fnmatch.fnmatchcase(c, pattern) for c in candidates):
                verdict = not negate
                break
    return verdict


def dockerignore(path: Path) -> list[str]:
    lines = (line.strip() for line in path.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("#")]
