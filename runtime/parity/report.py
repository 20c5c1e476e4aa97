"""Parity reports: parity.json (machine-readable), parity.html (for people), parity.junit.xml (for CI)."""

from __future__ import annotations

import html
import xml.etree.ElementTree as ET

from sparsetrt.runtime.settings import GENERATION_METRICS, METRICS


def junit_xml(report: dict) -> str:
    """One <testcase> per check (each tolerance of each candidate, each sparsity verification)."""
    cases = []
    for cand in report["candidates"]:
        for check in cand["checks"]:
            cases.append((f"parity.{cand['name']}", check["metric"], check["passed"],
                          f"{check['metric']} = {check['value']:.6g}, required {check['op']} {check['threshold']:g}"))
    for name, verification in report.get("sparsity_verification", {}).items():
        message = "; ".join(verification["failures"][:5]) or f"{verification['checked']} modules checked"
        cases.append(("sparsity", name, verification["ok"], message))
    suite = ET.Element("testsuite", name="sparsetrt.parity", tests=str(len(cases)),
                       failures=str(sum(not ok for *_, ok, _ in cases)), errors="0", skipped="0")
    for classname, name, ok, message in cases:
        case = ET.SubElement(suite, "testcase", classname=classname, name=name, time="0")
        if ok:
            ET.SubElement(case, "system-out").text = message
        else:
            ET.SubElement(case, "failure", message=message, type="ToleranceExceeded").text = message
    ET.indent(suite)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(suite, encoding="unicode") + "\n"


_STYLE = """body{font-family:system-ui,sans-serif;margin:2em;max-width:70em;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:.3em .7em;text-align:right}
th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}.pass{color:#176f2c;font-weight:600}
.fail{color:#b00020;font-weight:600}code{background:#f4f4f4;padding:0 .2em}"""


def html_report(report: dict) -> str:
    e = html.escape
    verdict = "PASS" if report["passed"] else "FAIL"
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>sparsetrt parity — {verdict}</title>",
             f"<style>{_STYLE}</style></head><body>",
             f"<h1>Parity: <span class='{verdict.lower()}'>{verdict}</span></h1>",
             f"<p>Reference: <b>{e(report['reference']['backend'])}</b> ({e(report['reference']['dtype'])}) on "
             f"<code>{e(report['reference']['checkpoint'])}</code>.<br>Evaluation text: {e(report['eval']['corpus'])}; "
             f"{report['eval']['windows']} window(s) of {report['eval']['seq_len']} tokens.<br>"
             f"Machine: {e(report['machine'])}</p>"]
    metrics = [m for m in METRICS if m != "positions"] + list(GENERATION_METRICS) + ["seconds"]
    parts.append("<h2>Metrics</h2><table><tr><th>metric</th>")
    parts += [f"<th>{e(c['name'])}</th>" for c in report["candidates"]]
    parts.append("</tr>")
    for metric in metrics:
        parts.append(f"<tr><td>{metric}</td>")
        for cand in report["candidates"]:
            value = cand["metrics"].get(metric)
            parts.append(f"<td>{'' if value is None else f'{value:.6g}'}</td>")
        parts.append("</tr>")
    parts.append("</table><h2>Checks</h2><table><tr><th>candidate</th><th>metric</th><th>value</th>"
                 "<th>required</th><th>result</th></tr>")
    for cand in report["candidates"]:
        for c in cand["checks"]:
            cls = "pass" if c["passed"] else "fail"
            parts.append(f"<tr><td>{e(cand['name'])}</td><td>{c['metric']}</td><td>{c['value']:.6g}</td>"
                         f"<td>{c['op']} {c['threshold']:g}</td><td class='{cls}'>{cls.upper()}</td></tr>")
    parts.append("</table>")
    if report.get("sparsity_verification"):
        parts.append("<h2>2:4 verification of the exported files</h2><table><tr><th>file</th><th>modules checked</th>"
                     "<th>result</th></tr>")
        for name, v in report["sparsity_verification"].items():
            cls = "pass" if v["ok"] else "fail"
            parts.append(f"<tr><td>{e(name)}</td><td>{v['checked']}</td><td class='{cls}'>{cls.upper()}"
                         f"{'' if v['ok'] else ': ' + e('; '.join(v['failures'][:3]))}</td></tr>")
        parts.append("</table>")
    parts.append("<p>Top-5 agreement is the mean overlap of the two top-5 token sets; KL is KL(reference ‖ candidate) "
                 "per position, in nats. Tolerances are per precision and can be overridden "
                 "(<code>--tol fp16.max_abs_error=0.5</code>).</p></body></html>\n")
    return "".join(parts)
