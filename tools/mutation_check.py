"""Delete each security, reliability and product rule in turn, run the tests, and show which test catches it.

A rule that no test catches is a promise nobody holds. Usage (from the repository root):

    bash tools/dev.sh python tools/mutation_check.py [--only NAME] [--markdown docs/rules.md]

Each mutation replaces one exact snippet of the source (the check fails loudly if the snippet has
moved, so the table cannot silently go stale); the file is restored afterwards, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FETCH_TESTS = ["tests/test_backend_fetch.py"]
AUTH_TESTS = ["tests/test_backend_server.py::test_basic_auth"]
DEVICE_TESTS = ("tests/test_devices.py",)
REGION_TESTS = ("tests/test_regions.py", "tests/test_regions_quality.py")
LIMIT_TESTS = ("tests/test_backend_limits.py", "-k", "not sigterm")


@dataclass(frozen=True)
class Mutation:
    rule: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...] = tuple(FETCH_TESTS)


MUTATIONS = [
    Mutation("credentials only to the Label Studio host (also after a redirect)", "backend/fetch.py",
             "headers = self.tokens.header() if host == ls_host else {}", "headers = self.tokens.header()"),
    Mutation("at most 5 redirects", "backend/fetch.py",
             "for _ in range(MAX_REDIRECTS + 1):", "for _ in iter(int, 1):"),
    Mutation("redirects only to http(s)", "backend/fetch.py",
             'if urlparse(target).scheme not in ("http", "https"):', "if False:"),
    Mutation("redirect targets: Label Studio, allow-listed or public hosts only", "backend/fetch.py",
             "if target_host != ls_host and not self._host_allowed(target_host, redirected=True):", "if False:"),
    Mutation("first request: Label Studio or allow-listed hosts only", "backend/fetch.py",
             "if first_host != ls_host and not self._host_allowed(first_host, redirected=False):", "if False:"),
    Mutation("private, loopback and link-local addresses are never public", "backend/fetch.py",
             "        if (address.is_private or address.is_loopback", "        if False and (address.is_private or address.is_loopback"),
    Mutation("streamed bodies stop at the size cap", "backend/fetch.py",
             "                if size > limit:\n", "                if False:\n"),
    Mutation("a declared Content-Length over the cap is refused", "backend/fetch.py",
             "if declared and declared.isdigit() and int(declared) > limit:", "if False:"),
    Mutation("local files over the size cap are refused", "backend/fetch.py",
             "if path.stat().st_size > self.settings.max_image_bytes:", "if False:"),
    Mutation("local files stay inside LOCAL_FILES_DOCUMENT_ROOT", "backend/fetch.py",
             "if root not in path.parents:", "if False:"),
    Mutation("data: URLs over the size cap are refused", "backend/fetch.py",
             "if len(payload) * 3 // 4 > self.settings.max_image_bytes:", "if False:"),
    Mutation("a Personal Access Token's access token is renewed once after a 401", "backend/fetch.py",
             "if response.status_code == 401 and headers and self.tokens.is_pat and not renewed:", "if False:"),
    Mutation("every request has a timeout", "backend/fetch.py",
             "timeout=timeout, stream=True", "stream=True"),
    Mutation("damaged cache entries are fetched again", "backend/fetch.py",
             "if hashlib.sha256(data).digest() == digest:", "if True:"),
    Mutation("an unwritable cache is skipped", "backend/fetch.py",
             "        except OSError as exc:\n            log.warning(\"download cache", "        except ZeroDivisionError as exc:\n            log.warning(\"download cache"),
    Mutation("interactive clicks are never refused by a full queue", "backend/worker.py",
             "if priority != INTERACTIVE:", "if True:", ("tests/test_backend_units.py",)),
    Mutation("a damaged state database is moved aside and rebuilt", "backend/state.py",
             "        except sqlite3.DatabaseError as exc:\n            aside",
             "        except ZeroDivisionError as exc:\n            aside", ("tests/test_backend_units.py",)),
    Mutation("a deleted state database is opened anew in every thread", "backend/state.py",
             "if db is not None and current != inode:", "if db is not None and current is None:",
             ("tests/test_backend_units.py",)),
    Mutation("tasks must be objects", "backend/server.py",
             """'{"id": 1, "data": {"image": "..."}}', optional=False)""", """'{"id": 1, "data": {"image": "..."}}')""",
             ("tests/test_backend_errors.py",)),
    Mutation("click coordinates must be numbers", "backend/model.py",
             "if isinstance(number, bool) or not isinstance(number, (int, float)) or number != number:", "if False:",
             ("tests/test_backend_errors.py",)),
    Mutation("settings are type-checked", "seediff_core/config.py", "    _check_types(self)\n", "",
             ("tests/test_backend_errors.py",)),
    # What the annotator sees (regions, clicks, labels per object, scores in the Data Manager).
    Mutation("a positive click keeps only the object under it", "seediff_core/pipeline.py",
             "clicked_objects(parts, hint.positive) if hint else parts", "parts", REGION_TESTS),
    Mutation("clicks steer the expansion at every scale", "seediff_core/methods/seediff.py",
             "        if clicks.any():  # a click", "        if False:  # a click", REGION_TESTS),
    Mutation("fragments are dropped", "seediff_core/regions.py",
             "if stats[index, cv2.CC_STAT_AREA] < min_area:", "if False:", REGION_TESTS),
    Mutation("slivers are dropped", "seediff_core/regions.py",
             "if 2 * float(distance[part].max()) - 1 < min_width:", "if False:", REGION_TESTS),
    Mutation("pinholes are filled", "seediff_core/regions.py",
             "small[1:] = stats[1:, cv2.CC_STAT_AREA] < min_area", "small[1:] = False", REGION_TESTS),
    Mutation("outlines are traced on the smoothed object, not the grid's steps", "seediff_core/regions.py",
             "soft = cv2.GaussianBlur(crop, (0, 0), OUTLINE_SIGMA, borderType=cv2.BORDER_CONSTANT)", "soft = crop",
             REGION_TESTS),
    Mutation("each region is scored alone", "seediff_core/pipeline.py",
             "float(output.score(alone)[k])", "float(scores[k])", REGION_TESTS),
    Mutation("labels per object", "seediff_core/methods/seediff.py",
             "        masks = label_objects(masks, share,", "        _ = label_objects(masks, share,", REGION_TESTS),
    Mutation("the project's model version follows the predictions", "backend/server.py",
             "            runtime.project_versions.after_predictions(", "            (lambda *a: None)(",
             ("tests/test_e2e_label_studio.py::test_retrieve_predictions_in_a_real_label_studio",)),
    # Cost (README, "Limits"): what a request may ask of the model, jobs past their time, shutdown.
    Mutation("limits: labels and prompt words are bounded before any work", "backend/limits.py",
             "    check_labels(targets, options, runtime.config(options.settings).synonyms)\n", "", LIMIT_TESTS),
    Mutation("limits: one image over the cost limit is refused at /setup and /predict", "backend/limits.py",
             "            limits.check_cost(cost)\n", "            pass\n", LIMIT_TESTS),
    Mutation("limits: a request over SEEDIFF_MAX_REQUEST_COST is refused", "backend/limits.py",
             "if tasks * units > limit:", "if False:", LIMIT_TESTS),
    Mutation("limits: more tasks than the queue can ever hold are a 400, not a 503", "backend/limits.py",
             "if images > capacity:", "if False:", LIMIT_TESTS),
    Mutation("limits: a job past SEEDIFF_JOB_SECONDS is stopped before its next UNet call", "backend/worker.py",
             "return self._stopping.is_set() or time.monotonic() > self._deadline", "return self._stopping.is_set()",
             ("tests/test_backend_limits.py::test_a_job_past_its_time_fails_alone_and_the_next_request_is_answered",)),
    Mutation("limits: SIGTERM stops the running job (its request answers 503)", "backend/server.py",
             "        runtime.shutdown()\n        if callable(previous):", "        if callable(previous):",
             ("tests/test_backend_limits.py::test_sigterm_stops_serve_within_10_s_and_answers_the_job_it_stops",)),
    Mutation("limits: after SIGTERM a worker has 5 s, not gunicorn's 30", "backend/server.py",
             '"graceful_timeout": SHUTDOWN_GRACE_SECONDS,', "",
             ("tests/test_backend_limits.py::test_sigterm_stops_serve_within_10_s_during_a_step_that_cannot_be_stopped",)),
    Mutation("limits: prelabel says a model that cannot load once, before any task", "backend/cli.py",
             "        job.wait_for_model()", "        pass",
             ("tests/test_prelabel.py::test_a_model_that_cannot_load_is_said_once_before_any_task",)),
    Mutation("limits: every setting within its range", "seediff_core/config.py",
             "    check_ranges({f.name: getattr(config, f.name) for f in dataclasses.fields(config)})\n", "",
             ("tests/test_limits.py",)),
    Mutation("limits: an image over the cost limit is refused before any UNet call", "seediff_core/pipeline.py",
             "        check_cost(self._cost(config, prepared[0].size, len(labels + extras), prompts, wanted, len(prepared)))\n",
             "", ("tests/test_limits.py",)),
    Mutation("limits: should_stop stops a run before the next UNet call", "seediff_core/pipeline.py",
             "            if should_stop():\n                raise Cancelled", "            if False:\n                raise Cancelled",
             ("tests/test_limits.py",)),
    Mutation("limits: seediff segment refuses labels over the cost limit before any image", "seediff_core/cli.py",
             "            check_cost(segmenter.estimate_cost(list(labels)))\n", "            pass\n",
             ("tests/test_cli.py::test_settings_over_a_limit_are_refused_before_any_image",)),
    Mutation("devices: the working image goes to the model's device", "seediff_core/pipeline.py",
             "torch.from_numpy(item.rgb).to(self.model.device).permute", "torch.from_numpy(item.rgb).permute",
             DEVICE_TESTS),
    Mutation("devices: the grid's valid cells on the maps' device", "seediff_core/maps.py",
             "ys = (torch.arange(h, dtype=torch.float32, device=self.device) + 0.5) / h",
             "ys = (torch.arange(h, dtype=torch.float32) + 0.5) / h", DEVICE_TESTS),
    Mutation("devices: hint masks on the maps' device", "seediff_core/methods/seediff.py",
             "allowed[k] &= box_mask(hint.boxes, grid, maps.device)", "allowed[k] &= box_mask(hint.boxes, grid)",
             DEVICE_TESTS),
    Mutation("devices: DiffSeg's merge marks on the proposals' device", "seediff_core/methods/diffseg.py",
             "marked = torch.zeros(len(proposals), dtype=torch.bool, device=proposals.device)",
             "marked = torch.zeros(len(proposals), dtype=torch.bool)", DEVICE_TESTS),
    Mutation("devices: one hand-over of the masks before the region stage", "seediff_core/pipeline.py",
             "masks = output.masks.bool().cpu()", "masks = output.masks.bool()", DEVICE_TESTS),
    Mutation("basic auth is required when set", "backend/server.py",
             "        if not ok:\n            response = _error(401", "        if False:\n            response = _error(401",
             tuple(AUTH_TESTS)),
    Mutation("basic auth checks the user", "backend/server.py",
             "ok = hmac.compare_digest(given_user, user) & ", "ok = True & ", tuple(AUTH_TESTS)),
    Mutation("basic auth checks the password", "backend/server.py",
             " & hmac.compare_digest(given_password, password)", "", tuple(AUTH_TESTS)),
]


def run(mutation: Mutation, timeout: int) -> list[str]:
    """The tests that fail with ``mutation`` applied (the source is restored afterwards)."""
    path = ROOT / mutation.path
    original = path.read_text()
    if original.count(mutation.old) != 1:
        raise SystemExit(f"{mutation.rule}: the snippet {mutation.old!r} is not in {mutation.path} exactly once")
    try:
        path.write_text(original.replace(mutation.old, mutation.new))
        result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rf",
                                 f"--timeout={timeout}", *mutation.tests], cwd=ROOT, capture_output=True, text=True)
    finally:
        path.write_text(original)
    return sorted(set(re.findall(r"^FAILED (.+?)(?: - .*)?$", result.stdout, re.M)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="run the mutations whose rule contains this text")
    parser.add_argument("--timeout", type=int, default=20, help="per-test timeout (s): a deleted cap may loop forever")
    parser.add_argument("--markdown", type=Path, help="also write the table to this file")
    args = parser.parse_args()
    rows, survived = [], []
    for mutation in MUTATIONS:
        if args.only and args.only not in mutation.rule:
            continue
        failing = run(mutation, args.timeout)
        names = ", ".join(f"`{name.split('::', 1)[-1]}`" for name in failing) or "**none: the rule is unguarded**"
        rows.append(f"| {mutation.rule} | `{mutation.path}` | {names} |")
        print(rows[-1], flush=True)
        if not failing:
            survived.append(mutation.rule)
    table = "| rule (deleted) | file | tests that fail |\n|---|---|---|\n" + "\n".join(rows) + "\n"
    if args.markdown:
        args.markdown.write_text(table)
    print(f"\n{len(rows) - len(survived)}/{len(rows)} rules guarded")
    if survived:
        raise SystemExit(f"unguarded: {survived}")


if __name__ == "__main__":
    main()
