#!/usr/bin/env python3
"""Rules of the source tree that a reader relies on (TAP).

1. Every message sits on one source line: no string literal in a message
   call (kv_error_set, kv_err, fprintf(stderr, ...), ...) continues on the
   next line, so a user can grep for the message they got.
2. One definition each of the page size and of MiB: src/base/units.h.
3. One helper for the switch-over timeline (kv_switch_log in base/log.h).
4. Each refusal message is written once: no message of 40 or more
   characters appears twice in src/.
Usage: test_source_rules.py SRC_DIR
"""
import os
import re
import sys

SRC = sys.argv[1]
CALLS = re.compile(
    r'\b(kv_error_set|kv_error_set_errno|kv_error_prefix|kv_err|kv_warn|'
    r'kv_info|kv_debug|kv_switch_log|fprintf\s*\(\s*stderr)\s*\(?')


def sources():
    for root, _, names in os.walk(SRC):
        for n in sorted(names):
            if n.endswith(('.c', '.h')):
                p = os.path.join(root, n)
                yield os.path.relpath(p, os.path.dirname(SRC)), p


def split_messages():
    bad = []
    for rel, path in sources():
        lines = open(path, encoding='utf-8').read().split('\n')
        for i in range(len(lines) - 1):
            a, b = lines[i].rstrip(), lines[i + 1].strip()
            if not (a.endswith('"') and b.startswith('"')):
                continue
            ctx = '\n'.join(lines[max(0, i - 4):i + 1])
            if CALLS.search(ctx) and not a.lstrip().startswith('#'):
                bad.append(f'{rel}:{i + 1}')
    return bad


def unit_definitions():
    pat = re.compile(r'^#define\s+(\w*PAGE_SIZE|\w*PAGE_SHIFT|\w*MIB\w*|'
                     r'\w*MiB\w*|PAGE)\b', re.M | re.I)
    bad = []
    for rel, path in sources():
        if rel.endswith('base/units.h'):
            continue
        for m in pat.finditer(open(path, encoding='utf-8').read()):
            bad.append(f'{rel}: #define {m.group(1)}')
    return bad


def switch_logs():
    bad = []
    for rel, path in sources():
        if rel.endswith('base/log.h'):
            continue
        text = open(path, encoding='utf-8').read()
        if 'SWITCH_LOG' in text or '"switchover"' in text:
            bad.append(rel)
    return bad


def repeated_messages():
    seen = {}
    # A literal next to a PRI macro is a fragment of a longer message.
    lit = re.compile(r'(?<!PRI..)(?<!PRI...)(?<!PRIu64 )(?<!PRIx64 )(?<!PRIu32 )'
                     r'"((?:[^"\\\n]|\\.){40,})"(?!\s*PRI)')
    for rel, path in sources():
        for n, line in enumerate(open(path, encoding='utf-8'), 1):
            if line.lstrip().startswith('#include'):
                continue
            for m in lit.finditer(line):
                seen.setdefault(m.group(1), []).append(f'{rel}:{n}')
    return [f'{" and ".join(w)}: "{t[:60]}..."' for t, w in seen.items()
            if len(w) > 1]


CHECKS = [
    ('messages on one source line', split_messages),
    ('one definition of the page size and MiB', unit_definitions),
    ('one switch-over timeline helper', switch_logs),
    ('each message written once', repeated_messages),
]

print(f'1..{len(CHECKS)}')
failed = 0
for n, (name, check) in enumerate(CHECKS, 1):
    bad = check()
    if bad:
        failed += 1
        print(f'not ok {n} - {name}')
        for b in bad[:50]:
            print(f'# {b}')
    else:
        print(f'ok {n} - {name}')
sys.exit(1 if failed else 0)
