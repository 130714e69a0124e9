// The in-browser half of tests/a11y.py (run through WebDriver's execute_script; not served to pages).
const a11y = (function () {
  const CONTROLS = "input:not([type=hidden]), select, textarea";
  const FOCUSABLE = "a[href], button, " + CONTROLS + ", [tabindex]";

  function describe(el) {
    const text = (el.getAttribute("aria-label") || el.textContent || el.value || "").trim().replace(/\s+/g, " ");
    const id = el.id ? "#" + el.id : "";
    return "<" + el.tagName.toLowerCase() + id + (el.type ? " type=" + el.type : "") + "> " + JSON.stringify(text.slice(0, 40));
  }

  function shown(el) {
    const r = el.getBoundingClientRect();
    const cs = getComputedStyle(el);
    return r.width > 0 && r.height > 0 && cs.visibility !== "hidden" && cs.display !== "none";
  }

  function byIds(el, attr) {
    return (el.getAttribute(attr) || "").split(/\s+/).filter(Boolean).map(function (id) { return document.getElementById(id); });
  }

  function nameOf(el) {
    const labelled = byIds(el, "aria-labelledby");
    if (labelled.length) return labelled.map(function (n) { return n ? n.textContent : ""; }).join(" ").trim();
    if ((el.getAttribute("aria-label") || "").trim()) return el.getAttribute("aria-label").trim();
    if (el.labels && el.labels.length) return Array.from(el.labels).map(function (l) { return l.textContent; }).join(" ").trim();
    if (el.matches("button, a")) return el.textContent.trim();
    if (el.matches("input[type=submit], input[type=button]")) return (el.value || "").trim();
    return (el.getAttribute("title") || "").trim();
  }

  function unnamed() {
    const bad = [];
    document.querySelectorAll(CONTROLS + ", button, a[href]").forEach(function (el) {
      if (!nameOf(el)) bad.push(describe(el));
    });
    document.querySelectorAll("img").forEach(function (el) {
      if (el.getAttribute("alt") === null) bad.push("img without alt: " + el.src);
    });
    document.querySelectorAll("svg").forEach(function (el) {
      if (el.getAttribute("aria-hidden") === "true") return;
      const title = el.querySelector(":scope > title");
      if (el.getAttribute("role") !== "img" || !(nameOf(el) || (title && title.textContent.trim()))) {
        bad.push("svg without role=img and a text alternative");
      }
    });
    document.querySelectorAll("label[for]").forEach(function (el) {
      if (!document.getElementById(el.htmlFor)) bad.push("label for a missing id: " + el.htmlFor);
    });
    document.querySelectorAll("[aria-labelledby], [aria-describedby]").forEach(function (el) {
      byIds(el, "aria-labelledby").concat(byIds(el, "aria-describedby")).forEach(function (n) {
        if (!n) bad.push("aria reference to a missing id on " + describe(el));
      });
    });
    if (!document.documentElement.lang) bad.push("<html> without lang");
    if (!document.title.trim()) bad.push("no <title>");
    return bad;
  }

  function rgba(text) {
    const m = /rgba?\(([^)]+)\)/.exec(text || "");
    if (!m) return null;
    const p = m[1].split(/[\s,\/]+/).filter(Boolean).map(Number);
    return [p[0], p[1], p[2], p.length > 3 ? p[3] : 1];
  }

  function over(top, bottom) {  // top (with alpha) composited over an opaque bottom
    const a = top[3];
    return [0, 1, 2].map(function (i) { return top[i] * a + bottom[i] * (1 - a); }).concat([1]);
  }

  function background(el) {
    const layers = [];
    for (let n = el; n && n.nodeType === 1; n = n.parentElement) {
      const bg = rgba(getComputedStyle(n).backgroundColor);
      if (bg && bg[3] > 0) {
        layers.push(bg);
        if (bg[3] >= 1) break;
      }
    }
    let color = [255, 255, 255, 1];  // the canvas
    for (let i = layers.length - 1; i >= 0; i--) color = over(layers[i], color);
    return color;
  }

  function luminance(c) {
    const ch = [0, 1, 2].map(function (i) {
      const v = c[i] / 255;
      return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4);
    });
    return 0.2126 * ch[0] + 0.7152 * ch[1] + 0.0722 * ch[2];
  }

  function ratio(fg, bg) {
    const a = luminance(over(fg, bg)), b = luminance(bg);
    return (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
  }

  function large(cs) {
    const size = parseFloat(cs.fontSize), weight = parseInt(cs.fontWeight, 10) || 400;
    return size >= 24 || (size >= 18.66 && weight >= 700);
  }

  function hasText(el) {
    if (el.matches(CONTROLS)) return el.type !== "checkbox" && el.type !== "radio";
    return Array.from(el.childNodes).some(function (n) { return n.nodeType === 3 && n.textContent.trim(); });
  }

  function contrastProblem(el, pseudo) {
    const cs = getComputedStyle(el, pseudo || null);
    const fg = rgba(el instanceof SVGElement && !pseudo ? cs.fill : cs.color);
    if (!fg) return null;
    const bg = background(el), need = large(cs) ? 3 : 4.5, got = ratio(fg, bg);
    if (got >= need) return null;
    return describe(el) + (pseudo || "") + ": " + got.toFixed(2) + ":1 < " + need + ":1 (" + cs.color + " on rgb(" + bg.slice(0, 3).map(Math.round).join(", ") + "))";
  }

  function lowContrast(root) {
    const bad = [];
    root.querySelectorAll("body *").forEach(function (el) {
      if (el.closest("option, title, script, style") || !shown(el)) return;
      if (hasText(el)) {
        const problem = contrastProblem(el);
        if (problem) bad.push(problem);
      }
      if (el.matches("input[placeholder], textarea[placeholder]") && el.placeholder && !el.value) {
        const problem = contrastProblem(el, "::placeholder");
        if (problem) bad.push(problem);
      }
    });
    return bad;
  }

  function ring(el) {
    const cs = getComputedStyle(el);
    const outline = cs.outlineStyle !== "none" && parseFloat(cs.outlineWidth) >= 1 ? cs.outlineStyle + " " + cs.outlineWidth + " " + cs.outlineColor : "";
    const shadow = cs.boxShadow !== "none" ? cs.boxShadow : "";
    return { visible: !!(outline || shadow), key: outline + "|" + shadow, outline: outline ? rgba(cs.outlineColor) : null };
  }

  function startTabWalk() {
    if (document.activeElement && document.activeElement !== document.body) document.activeElement.blur();
    const controls = Array.from(document.querySelectorAll(FOCUSABLE)).filter(function (el) {
      return !el.disabled && el.tabIndex >= 0 && shown(el);
    });
    const positive = Array.from(document.querySelectorAll("[tabindex]")).filter(function (el) { return el.tabIndex > 0; }).map(describe);
    const state = { controls: controls, unfocused: controls.map(function (el) { return ring(el).key; }), log: [] };
    state.listener = function (event) {
      const el = event.target, index = state.controls.indexOf(el), now = ring(el);
      let indicator = "";
      if (!now.visible) indicator = "no focus indicator (outline or box-shadow)";
      else if (index >= 0 && now.key === state.unfocused[index]) indicator = "looks the same focused as unfocused";
      else if (now.outline && ratio(now.outline, background(el.parentElement || el)) < 3) indicator = "focus outline below 3:1 against the page";
      state.log.push({ index: index, what: describe(el), indicator: indicator, contrast: hasText(el) ? contrastProblem(el) || "" : "" });
    };
    window.__a11yTab = state;
    document.addEventListener("focusin", state.listener);
    window.scrollTo(0, 0);
    const dates = controls.filter(function (el) { return el.type === "date"; }).length;
    return { controls: controls.map(describe), positive: positive, presses: controls.length + 3 * dates + 2 };
  }

  function tabLog() { return window.__a11yTab.log; }

  function stopTabWalk() {
    document.removeEventListener("focusin", window.__a11yTab.listener);
    if (document.activeElement) document.activeElement.blur();
    return true;
  }

  function sideways() {
    const width = document.documentElement.clientWidth, culprits = [];
    document.querySelectorAll("body *").forEach(function (el) {
      if (el.getBoundingClientRect().right <= width + 0.5 || !shown(el)) return;
      for (let n = el.parentElement; n; n = n.parentElement) {
        if (getComputedStyle(n).overflowX !== "visible") return;  // scrolls (or clips) inside its own box
      }
      culprits.push(describe(el));
    });
    return { scrollWidth: document.documentElement.scrollWidth, clientWidth: width, culprits: culprits.slice(0, 10) };
  }

  function hoverProblem(el) { return hasText(el) ? contrastProblem(el) : null; }

  function hoverTargets() {  // one of each kind: same tag, classes, colours and background
    const seen = new Set();
    return Array.from(document.querySelectorAll("a[href], button")).filter(function (el) {
      const cs = getComputedStyle(el);
      const kind = [el.tagName, el.className, cs.color, cs.backgroundColor, background(el).join()].join("|");
      if (!shown(el) || seen.has(kind)) return false;
      seen.add(kind);
      return true;
    });
  }

  return { unnamed: unnamed, lowContrast: lowContrast, hoverProblem: hoverProblem, hoverTargets: hoverTargets, startTabWalk: startTabWalk, tabLog: tabLog, stopTabWalk: stopTabWalk, sideways: sideways };
})();
