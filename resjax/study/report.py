"""The report: findings.json, report.md and report.html (self-contained)."""

from __future__ import annotations

import base64
import html
import os

import ml_collections
from absl import logging

from resjax import plots
from resjax.logs import format_seconds
from resjax.study import figures as draw
from resjax.study.findings import cap, compute_findings, pct
from resjax.study.findings.sweep import sweep_runs
from resjax.study.grid import (
    DIVERGED,
    ERROR_FILE,
    INPUTS_FILE,
    RunSpec,
    inspection_inputs,
    inspection_targets,
    load_status,
    read_json,
    read_text,
    run_state,
)
from resjax.study.numbers import collect, run_numbers

SECTIONS = {
    1: ('Training and test error (He et al. 2015, Fig. 6)', 'fig1_error'),
    2: ('Gradient profiles at init and during training', 'fig2_gradients'),
    3: ('Layer responses (He et al. 2015, Fig. 7)', 'fig3_responses'),
    4: ('Sharpness against 2/lr', 'fig4_sharpness'),
    5: ('Hessian spectral density at the end of training', 'spectrum'),
    6: ('2-D loss landscapes of the deepest nets (Li et al. 2018, Fig. 5)', 'landscape2d'),
    7: ('Lesions of the residual nets (Veit et al. 2016)', 'lesion'),
    8: ('What a block does: the change it makes and its residual branch', 'fig8_blocks'),
    9: ('How alike consecutive blocks are (linear CKA)', 'fig9_cka'),
    10: ('Distance from init', 'fig10_distance'),
    11: ('The constructed solution (He et al. 2015, Sec. 4.1)', 'fig11_constructed'),
    12: ('CKA between every pair of blocks, and block probes of the final nets', 'blocks'),
    13: ('The constructed solution as a controlled lr sweep', 'fig13_sweep'),
    14: ('Loss barriers: init to solution, and between two runs from one init', 'barriers'),
    15: ('Model variants beside the grid nets of their depth and seed', 'fig15_variants'),
}
# Inspection figures: report number -> the inspection probe that draws it.
INSPECTED = {5: 'spectrum', 6: 'landscape2d', 7: 'lesion', 12: 'blocks', 14: 'barriers'}


def write_report(config: ml_collections.ConfigDict, specs: list[RunSpec], workdir: str) -> dict:
    """Draws figures 1-4 from the runs' metrics, picks up figures 5-7 from earlier inspection,
    computes the findings and writes `findings.json`, `report.md` and `report.html`.

    Returns the findings.json content: `runs` (state and `run_numbers` of each run),
    `findings`, `figures` ({number: {'path', 'width', 'height'}}), `missing` (lines).
    """
    runs = collect(specs)
    grid = [r for r in runs if r.spec.group]  # Figures 1-4 compare grid points.
    fig_dir = os.path.join(workdir, 'figures')
    figures: dict[int, dict | None] = {
        1: draw.figure_errors(grid, fig_dir),
        2: draw.figure_gradients(grid, fig_dir),
        3: draw.figure_responses(grid, fig_dir),
    }
    # Figure 4 needs the sharpness probe: a study with it off in every grid run (e.g.
    # configs/study_shortcut_folder.py) leaves it out rather than wait for it.
    if any(r.spec.config.probes.hessian_every_steps > 0 for r in grid):
        figures[4] = draw.figure_sharpness(grid, fig_dir)
    figures |= {
        8: draw.figure_blocks(runs, fig_dir),
        9: draw.figure_cka(runs, fig_dir),
        10: draw.figure_distance(runs, fig_dir),
    }
    if config.study.constructed and not config.study.constructed_lrs:
        figures[11] = draw.figure_constructed(runs, fig_dir)
    if config.study.constructed_lrs:
        figures[13] = draw.figure_sweep(sweep_runs(config.study, runs), fig_dir)
    if config.study.get('variants', ()):
        figures[15] = draw.figure_variants(runs, fig_dir)
    inspection, targets = {}, inspection_targets(specs, config.study.inspect.max_depth)
    notes: dict[int, str] = {}  # Why an inspection figure is left out or out of date.
    for number, name in INSPECTED.items():
        if name not in config.study.inspect.figures:
            continue
        figures[number], inspection[name] = draw.inspection_figure(workdir, name)
        note, stale = _inspection_note(config, targets.get(name, []), workdir, name)
        if note:
            notes[number] = note
        if stale:  # Numbers of other inputs must not make findings.
            figures[number] = inspection[name] = None
    findings = compute_findings(config, runs, inspection)
    unfinished = [r for r in runs if r.state != 'finished']
    missing = [
        f'{r.spec.name}: {r.state}'
        + (
            f' (step {max(x["step"] for x in r.rows)} of {r.spec.config.train.steps})'
            if r.rows
            else ''
        )
        + (
            f': {read_text(os.path.join(r.spec.workdir, DIVERGED))}'
            if r.state == 'diverged'
            else ''
        )
        for r in unfinished
    ]
    # A diverged run is a result (the report lists it); anything else left needs a rerun.
    incomplete = [line for line, r in zip(missing, unfinished) if r.state != 'diverged']
    figure_lines = [
        f'figure {n} ({SECTIONS[n][0]}): {notes.get(n, "not drawn yet")}'
        for n in figures
        if figures[n] is None or n in notes
    ]
    missing += figure_lines
    incomplete += figure_lines
    status = load_status(workdir)
    result = {
        'runs': {
            r.spec.name: {
                'state': r.state,
                'seconds': status.get(r.spec.name, {}).get('seconds'),
                **run_numbers(r),
            }
            for r in runs
        },
        'findings': findings,
        'figures': {str(n): f for n, f in figures.items() if f},
        'missing': missing,
        # 'complete': every run finished (or diverged: a result) and every figure drawn.
        'status': 'incomplete' if incomplete else 'complete',
    }
    plots.write_json(os.path.join(workdir, 'findings.json'), result)
    blocks = _report_blocks(config, runs, figures, findings, missing, notes, workdir)
    with open(os.path.join(workdir, 'report.md'), 'w') as f:
        f.write(render_markdown(blocks, workdir))
    with open(os.path.join(workdir, 'report.html'), 'w') as f:
        f.write(render_html(blocks))
    logging.info('study: wrote %s and report.html', os.path.join(workdir, 'report.md'))
    return result


def _inspection_note(
    config: ml_collections.ConfigDict, targets: list[RunSpec], workdir: str, name: str
) -> tuple[str, bool]:
    """(why inspection figure `name` is not current, or '', whether it is stale). Stale: its
    last drawing used other inspection options, so the report leaves it out. Not current
    either: it lacks runs finished since it was drawn, or the last attempt to draw it failed
    (`run_inspection` wrote the error)."""
    out_dir = os.path.join(workdir, 'inspect', name)
    drawn = read_json(os.path.join(out_dir, INPUTS_FILE), {})
    error = read_text(os.path.join(out_dir, ERROR_FILE))
    ready = [s for s in targets if run_state(s) == 'finished']
    want = inspection_inputs(config.study.inspect, ready, workdir)
    notes, stale = [], False
    if drawn:
        old = drawn.get('options', {})
        changed = [f'{k}={old.get(k)!r} (now {v!r})' for k, v in want['options'].items()
                   if old.get(k) != v]  # fmt: skip
        if changed:
            stale = True
            notes.append('left out: drawn with study.inspect.' + ', '.join(changed))
        runs = drawn.get('runs', [])
        new = [s.name for s in ready if os.path.relpath(s.workdir, workdir) not in runs]
        if new:
            notes.append(f'does not include {", ".join(new)} yet')
    if error:
        notes.append(f'inspection failed: {error}')
    if notes and drawn:
        notes.append('rerun the study to redraw it')
    return '; '.join(notes), stale


def _report_blocks(config, runs, figures, findings, missing, notes, workdir) -> list[tuple]:
    s = config.study
    t = config.train
    status = load_status(workdir)
    blocks: list[tuple] = [('h1', 'Plain vs residual networks: the study')]
    extra = ''.join(f', excluding {e}' for e in s.exclude)
    recipe = (
        f'{t.steps} steps of batch {t.batch_size}, SGD momentum {t.momentum}, lr {t.lr} '
        f'({t.schedule}, {t.warmup_steps} steps of {t.warmup} warm-up), weight decay '
        f'{t.weight_decay}'
    )
    intro = (
        f'Dataset {config.dataset.name}; grid: depths {list(s.depths)}{extra}, residual '
        f'{list(s.residual)}, norm {list(s.norms)}, seeds {list(s.seeds)}. Every run: {recipe}'
        + ''.join(f'; override "{o}"' for o in s.overrides)
        + ''.join(f'; variant "{v}"' for v in s.get('variants', ()))
        + (
            f'; constructed-solution sweep ({", ".join(s.constructed)}): {s.constructed_steps} '
            f'steps at each constant lr {list(s.constructed_lrs)}, no warm-up'
            if s.constructed_lrs
            else ''
        )
        + f'. Signal probes every {config.probes.every_steps} steps, sharpness every '
        f'{config.probes.hessian_every_steps} ({config.probes.hessian_batch} batch, BN '
        f"{config.probes.bn_mode} mode). Every number below is computed from the runs' "
        'metrics.jsonl and the inspection outputs (findings.json holds them all).'
    )
    blocks.append(('p', intro))
    header = ['run', 'state', 'steps', 'final train error', 'final test error', 'wall time']
    table = []
    for r in runs:
        n = run_numbers(r)
        last = max((x['step'] for x in r.rows), default=0)
        seconds = status.get(r.spec.name, {}).get('seconds')
        table.append(
            [
                r.spec.name,
                r.state,
                f'{last}/{r.spec.config.train.steps}',
                pct(n['final_train_error']) if n['final_train_error'] is not None else '-',
                pct(n['final_test_error']) if n['final_test_error'] is not None else '-',
                format_seconds(seconds) if seconds else '-',
            ]
        )
    blocks.append(('table', header, table))
    if missing:
        blocks.append(('h2', 'Missing'))
        blocks.append(('p', 'This study is not complete; what follows shows what exists.'))
        blocks.append(('ul', missing))
    questions = [f for f in findings if f['question']]
    if questions:
        blocks.append(('h2', 'What the question asks, and what the runs say'))
        blocks.append(
            (
                'p',
                'Do ResNets work because they fix vanishing gradients, and if not, why is a '
                'residual easier to learn and why does a plain net not close the gap? Each '
                'answer below states the rule that decides it, then the numbers from these runs '
                'with their control and their seed-to-seed spread, and the claim it supports or '
                'contradicts; "not available" or "undecided" means the runs cannot decide, '
                '"provisional" that one seed decided it.',
            )
        )
        for f in questions:
            blocks.append(('h3', f['question']))
            # The rule first: it was fixed before the runs, and the numbers are read against it.
            rule = f'*Rule:* {f["rule"]}. ' if f['rule'] else ''
            blocks.append(
                ('p', f'**{cap(f["verdict"])}** (Figure {f["figure"]}). {rule}{f["text"]}')
            )
            blocks.append(('p', f'*Claim tested:* {f["paper"]}'))
    blocks.append(('h2', 'Findings'))
    blocks.append(
        ('ul', [f'Fig. {f["figure"]}, {f["title"]}: **{f["verdict"]}**' for f in findings])
    )
    for number, (title, _) in SECTIONS.items():
        if number not in figures:
            continue  # Not part of this study (no constructed run, figure not asked for).
        blocks.append(('h3', f'Figure {number}: {title}'))
        fig = figures.get(number)
        if fig:
            blocks.append(('img', fig['path'], f'Figure {number}: {title}'))
            if number in notes:
                blocks.append(('p', f'*Out of date: {notes[number]}.*'))
        elif number in notes:
            blocks.append(('p', f'*Not shown: {notes[number]}.*'))
        else:
            blocks.append(('p', '*Not drawn yet: its runs or inspection are missing.*'))
        for f in findings:
            if f['figure'] == number and not f['question']:
                rule = f' *Rule:* {f["rule"]}.' if f['rule'] else ''
                blocks.append(('p', f'**{cap(f["verdict"])}.** {f["text"]}{rule}'))
                blocks.append(('p', f'*Paper:* {f["paper"]}'))
    return blocks


def render_markdown(blocks: list[tuple], workdir: str) -> str:
    """Markdown for the report blocks; images by path relative to the workdir."""
    lines = []
    for kind, *args in blocks:
        if kind == 'h1':
            lines += [f'# {args[0]}', '']
        elif kind == 'h2':
            lines += [f'## {args[0]}', '']
        elif kind == 'h3':
            lines += [f'### {args[0]}', '']
        elif kind == 'p':
            lines += [args[0], '']
        elif kind == 'ul':
            lines += [f'- {item}' for item in args[0]] + ['']
        elif kind == 'img':
            lines += [f'![{args[1]}]({os.path.relpath(args[0], workdir)})', '']
        elif kind == 'table':
            header, rows = args
            lines.append('| ' + ' | '.join(header) + ' |')
            lines.append('|' + ' --- |' * len(header))
            lines += ['| ' + ' | '.join(str(c) for c in row) + ' |' for row in rows] + ['']
    return '\n'.join(lines)


def _inline_html(text: str) -> str:
    # The report's own markup only: **bold** and *italic*.
    out = html.escape(text)
    parts = out.split('**')
    out = ''.join(f'<b>{p}</b>' if i % 2 else p for i, p in enumerate(parts))
    parts = out.split('*')
    return ''.join(f'<i>{p}</i>' if i % 2 else p for i, p in enumerate(parts))


def render_html(blocks: list[tuple]) -> str:
    """A self-contained HTML page for the report blocks: figures as base64 PNG data URIs."""
    body = []
    for kind, *args in blocks:
        if kind in ('h1', 'h2', 'h3'):
            body.append(f'<{kind}>{html.escape(args[0])}</{kind}>')
        elif kind == 'p':
            body.append(f'<p>{_inline_html(args[0])}</p>')
        elif kind == 'ul':
            body.append('<ul>' + ''.join(f'<li>{_inline_html(i)}</li>' for i in args[0]) + '</ul>')
        elif kind == 'img':
            with open(args[0], 'rb') as f:
                data = base64.b64encode(f.read()).decode('ascii')
            body.append(
                f'<figure><img alt="{html.escape(args[1])}" src="data:image/png;base64,'
                f'{data}"><figcaption>{html.escape(args[1])}</figcaption></figure>'
            )
        elif kind == 'table':
            header, rows = args
            body.append(
                '<table><tr>'
                + ''.join(f'<th>{html.escape(h)}</th>' for h in header)
                + '</tr>'
                + ''.join(
                    '<tr>' + ''.join(f'<td>{html.escape(str(c))}</td>' for c in row) + '</tr>'
                    for row in rows
                )
                + '</table>'
            )
    style = (
        'body{font-family:sans-serif;max-width:1100px;margin:2em auto;line-height:1.45}'
        'img{max-width:100%}table{border-collapse:collapse}td,th{border:1px solid #ccc;'
        'padding:2px 8px}figcaption{font-size:90%;color:#555}'
    )
    return (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>resjax study</title>'
        f'<style>{style}</style></head><body>\n' + '\n'.join(body) + '\n</body></html>\n'
    )
