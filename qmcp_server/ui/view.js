/* The qmcp run view: one page for the MCP App (inside an MCP client, over the Apps postMessage
 * bridge) and for the browser (next to the HTTP transport, or `qmcp executions view`).
 * Everything a run says is untrusted text: it reaches the DOM through textContent only. */
(function () {
  "use strict";

  var boot = JSON.parse(document.getElementById("qmcp-boot").textContent || "{}");
  var POLL_MS = boot.poll_ms || 1500;
  var PROTOCOL = "2026-01-26";
  var state = {
    view: null,
    raw: "",
    open: {},          // invocation keys whose details are shown
    executionId: boot.execution_id || null,
    note: null,        // a line for the user (waiting for a run, an error reaching it)
    timer: null,
    renders: 0,
    followTopology: null,
  };

  // -- small DOM helpers (text only, never HTML) -------------------------------------------

  function h(tag, attrs) {
    var el = document.createElement(tag);
    if (attrs) {
      for (var name in attrs) {
        var value = attrs[name];
        if (value === null || value === undefined || value === false) continue;
        if (name === "text") el.textContent = String(value);
        else if (name === "cls") el.className = value;
        else if (name === "on") { for (var ev in value) el.addEventListener(ev, value[ev]); }
        else if (name.indexOf("data-") === 0 || name === "title" || name === "id" || name === "href" || name === "colspan" || name === "type") el.setAttribute(name, String(value));
      }
    }
    for (var i = 2; i < arguments.length; i++) add(el, arguments[i]);
    return el;
  }
  function add(el, child) {
    if (child === null || child === undefined || child === false) return;
    if (Array.isArray(child)) { child.forEach(function (c) { add(el, c); }); return; }
    el.appendChild(typeof child === "object" ? child : document.createTextNode(String(child)));
  }
  function badge(status, label) { return h("span", { cls: "badge", "data-status": status, text: label || status }); }
  function fmtMs(ms) {
    if (ms === null || ms === undefined) return "";
    if (ms < 1000) return Math.round(ms) + " ms";
    if (ms < 60000) return (ms / 1000).toFixed(1) + " s";
    return Math.floor(ms / 60000) + " m " + Math.round((ms % 60000) / 1000) + " s";
  }
  function fmtCost(c) {
    if (c === null || c === undefined) return "—";
    if (c === 0) return "$0";
    return c < 0.01 ? "$" + c.toFixed(4) : "$" + c.toFixed(2);
  }
  function fmtInt(n) { return (n || 0).toLocaleString("en-US"); }
  function json(v) { try { return JSON.stringify(v, null, 2); } catch (e) { return String(v); } }
  function statusLabel(s) { return s === "idle" ? "not called" : s; }

  // -- rendering -------------------------------------------------------------------------

  function render() {
    var root = document.getElementById("app");
    var view = state.view;
    var scrollY = window.scrollY;
    root.textContent = "";
    if (!view) {
      root.appendChild(h("header", null, h("div", { cls: "title" }, h("h1", { text: "qmcp run view" }))));
      root.appendChild(h("div", { cls: "banner note", id: "note", text: state.note || "Waiting for an execution…" }));
      return done();
    }
    var ex = view.execution, t = view.totals;
    var live = view.live && state.timer !== null;
    root.appendChild(h("header", null,
      h("div", { cls: "title" },
        h("h1", { text: ex.topology_name }),
        h("span", { cls: "muted", text: ex.topology_type + " on " + ex.runner_type }),
        h("span", { id: "exec-status", "data-status": ex.status }, badge(ex.status)),
        h("span", { cls: "id", title: "execution id", text: ex.id })),
      h("div", { cls: "chips" },
        h("span", { cls: "chip", id: "progress" }, h("b", { text: t.done }), " / " + t.planned + " invocations"),
        t.failed ? h("span", { cls: "chip" }, h("b", { text: t.failed }), " failed") : null,
        h("span", { cls: "chip" }, h("b", { text: fmtInt(t.input_tokens) }), " in · ", h("b", { text: fmtInt(t.output_tokens) }), " out tokens"),
        h("span", { cls: "chip" }, "cost ", h("b", { text: fmtCost(t.cost_usd) })),
        t.tool_calls ? h("span", { cls: "chip" }, h("b", { text: t.tool_calls }), " tool calls") : null,
        ex.duration_ms !== null && ex.duration_ms !== undefined ? h("span", { cls: "chip", text: fmtMs(ex.duration_ms) }) : null,
        h("span", { cls: "live", "data-on": live ? "1" : "0", title: "the view refreshes while the run goes on" },
          h("span", { cls: "dot" }), live ? "live" : "updated " + new Date().toLocaleTimeString()),
        h("button", { type: "button", on: { click: refreshNow }, text: "Refresh" }))));
    if (state.note) root.appendChild(h("div", { cls: "banner note", id: "note", text: state.note }));
    if (ex.error) root.appendChild(h("div", { cls: "banner error", id: "error" }, h("b", { text: "error: " }), ex.error));
    var pending = view.approvals.filter(function (a) { return a.status === "pending"; });
    if (ex.status === "pending" && pending.length) {
      root.appendChild(h("div", { cls: "banner warn", text: pending.length + " approval(s) wait for a human; the run goes on when it is resumed after they are answered." }));
    }
    root.appendChild(h("section", { id: "topology" }, h("h2", { text: "Topology" }), graph(view.topology, true)));
    var side = h("div", null);
    if (view.approvals.length) side.appendChild(approvals(view.approvals));
    view.panels.forEach(function (p) { var el = panel(p); if (el) side.appendChild(el); });
    if (ex.content) {
      side.appendChild(h("section", { cls: "panel", id: "output" }, h("h2", { text: "Output" }), h("pre", { text: ex.content })));
    }
    root.appendChild(h("div", { cls: "columns" },
      h("section", { id: "timeline" }, h("h2", { text: "Invocations" }), timeline(view.invocations)),
      h("section", { id: "panels" }, side)));
    drawEdges();
    window.scrollTo(0, scrollY);
    return done();
  }

  function done() {
    state.renders += 1;
    document.body.setAttribute("data-renders", String(state.renders));
    document.body.setAttribute("data-ready", "1");
    if (state.view) document.body.setAttribute("data-status", state.view.execution.status);
  }

  // The topology: one layer per column, input and output at the ends; a slot filled by a
  // topology holds that topology's own graph.
  function graph(node, top) {
    var g = h("div", { cls: top ? "graph" : "graph inner", "data-topology": node.name });
    if (top) g.appendChild(h("div", { cls: "terminal", "data-node": "input", text: "input" }));
    var bySlot = {};
    node.slots.forEach(function (m) { bySlot[m.slot] = m; });
    node.layers.forEach(function (layer) {
      var col = h("div", { cls: "layer" });
      layer.forEach(function (slot) { if (bySlot[slot]) col.appendChild(slotNode(bySlot[slot])); });
      g.appendChild(col);
    });
    if (top) g.appendChild(h("div", { cls: "terminal", "data-node": "output", text: "output" }));
    g._edges = node.edges;
    return g;
  }

  function slotNode(m) {
    var stats = [];
    if (m.invocations) stats.push(m.invocations + " call" + (m.invocations === 1 ? "" : "s"));
    if (m.input_tokens || m.output_tokens) stats.push(fmtInt(m.input_tokens + m.output_tokens) + " tok");
    if (m.cost_usd) stats.push(fmtCost(m.cost_usd));
    var status = m.status || "idle";
    if (m.kind === "topology") {
      var shown = (m.instances && m.instances.length) ? m.instances[m.instances.length - 1] : m.topology;
      var more = m.instances && m.instances.length > 1 ? " (" + m.instances.length + " runs)" : "";
      return h("div", { cls: "node nested", "data-node": m.slot, "data-status": status },
        h("div", null, h("span", { cls: "slot", text: m.slot }), " ", badge(status, statusLabel(status))),
        h("div", { cls: "agent", text: "topology " + m.name + " · " + shown.type + more }),
        graph(shown, false),
        stats.length ? h("div", { cls: "stats", text: stats.join(" · ") }) : null);
    }
    return h("div", { cls: "node", "data-node": m.slot, "data-status": status, title: m.role ? "role: " + m.role : null },
      h("div", null, h("span", { cls: "slot", text: m.slot }), " ", badge(status, statusLabel(status)),
        m.approval_pending ? badge("approval", "approval") : null),
      h("div", { cls: "agent", text: (m.agent || "") + (m.model ? " · " + m.model : "") }),
      stats.length ? h("div", { cls: "stats", text: stats.join(" · ") }) : null);
  }

  // Edges are drawn once the boxes are laid out, from their positions (any width, any wrap).
  function drawEdges() {
    var graphs = document.querySelectorAll(".graph");
    for (var i = graphs.length - 1; i >= 0; i--) {
      var g = graphs[i];
      var old = g.querySelector(":scope > svg.edges");
      if (old) old.remove();
      var edges = g._edges || [];
      if (!edges.length) continue;
      var NS = "http://www.w3.org/2000/svg";
      var svg = document.createElementNS(NS, "svg");
      svg.setAttribute("class", "edges");
      svg.setAttribute("width", String(g.scrollWidth));
      svg.setAttribute("height", String(g.scrollHeight));
      var box = g.getBoundingClientRect();
      var find = function (name) {
        var kids = g.querySelectorAll(":scope > .layer > [data-node], :scope > [data-node]");
        for (var k = 0; k < kids.length; k++) if (kids[k].getAttribute("data-node") === name) return kids[k];
        return null;
      };
      edges.forEach(function (e) {
        var a = find(e.from), b = find(e.to);
        if (!a || !b) return;
        var ra = a.getBoundingClientRect(), rb = b.getBoundingClientRect();
        var ox = g.scrollLeft - box.left, oy = g.scrollTop - box.top, d;
        var sideBySide = rb.left >= ra.right - 2 || rb.right <= ra.left + 2;
        if (!sideBySide) {
          // stacked (a narrow frame): bottom to top, or top to bottom going back
          var down = rb.top >= ra.top;
          var x1 = ra.left + ra.width / 2 + ox, y1 = (down ? ra.bottom : ra.top) + oy;
          var x2 = rb.left + rb.width / 2 + ox, y2 = (down ? rb.top : rb.bottom) + oy;
          if (!down) { x1 += 8; x2 += 8; }
          var dy = Math.max(10, Math.abs(y2 - y1) / 2) * (down ? 1 : -1);
          d = "M" + x1 + "," + y1 + " C" + x1 + "," + (y1 + dy) + " " + x2 + "," + (y2 - dy) + " " + x2 + "," + y2;
        } else {
          var back = rb.left + 2 < ra.left;
          var x1 = (back ? ra.left : ra.right) + ox, y1 = ra.top + ra.height / 2 + oy;
          var x2 = (back ? rb.right : rb.left) + ox, y2 = rb.top + rb.height / 2 + oy;
          if (back) { y1 += 6; y2 += 6; }
          var dx = Math.max(12, Math.abs(x2 - x1) / 2) * (back ? -1 : 1);
          d = "M" + x1 + "," + y1 + " C" + (x1 + dx) + "," + y1 + " " + (x2 - dx) + "," + y2 + " " + x2 + "," + y2;
        }
        var path = document.createElementNS(NS, "path");
        path.setAttribute("d", d);
        svg.appendChild(path);
        if (e.label && !g.classList.contains("inner")) {
          var label = document.createElementNS(NS, "text");
          label.setAttribute("x", String((x1 + x2) / 2 - 14));
          label.setAttribute("y", String((y1 + y2) / 2 - 3));
          label.textContent = e.label;
          svg.appendChild(label);
        }
      });
      g.insertBefore(svg, g.firstChild);
    }
  }

  function timeline(rows) {
    if (!rows.length) return h("p", { cls: "empty", text: "No invocation yet." });
    var span = 1;
    rows.forEach(function (r) { var d = took(r); if (r.offset_ms !== null && d) span = Math.max(span, r.offset_ms + d); });
    var body = h("tbody");
    rows.forEach(function (r) {
      var open = !!state.open[r.key];
      var bar = h("div", { cls: "track" });
      if (r.offset_ms !== null && r.offset_ms !== undefined) {
        var fill = h("div", { cls: "fill" });
        fill.style.left = Math.min(100, (100 * r.offset_ms) / span) + "%";
        fill.style.width = Math.max(0.5, (100 * (took(r) || 0)) / span) + "%";
        bar.appendChild(fill);
      }
      var statusCell = [badge(r.status)];
      if (r.approval) statusCell.push(" ", badge(r.approval.status === "pending" ? "approval" : r.approval.status, "approval " + r.approval.status));
      var tokens = r.status === "waiting" ? "" : fmtInt(r.input_tokens) + " / " + fmtInt(r.output_tokens);
      var tr = h("tr", { cls: "row", "data-key": r.key, "data-status": r.status, title: "show input and output", on: { click: function () { toggle(r.key); } } },
        h("td", { cls: "key" }, (open ? "▾ " : "▸ ") + r.key,
          h("div", { cls: "muted small", text: [r.agent, r.model].filter(Boolean).join(" · ") })),
        h("td", null, statusCell),
        h("td", { cls: "num", text: r.attempt ? "#" + r.attempt : "" }),
        h("td", { cls: "num", title: inFlight(r) ? "running for " + fmtMs(r.elapsed_ms) + " so far" : null,
          text: inFlight(r) ? fmtMs(r.elapsed_ms) + "…" : fmtMs(r.duration_ms) }),
        h("td", { cls: "num wide", text: tokens }),
        h("td", { cls: "num", text: r.cost_usd === null ? "" : fmtCost(r.cost_usd) }),
        h("td", { cls: "num", text: r.tool_calls === null || r.tool_calls === undefined ? "" : String(r.tool_calls) }),
        h("td", { cls: "bar wide" }, bar));
      body.appendChild(tr);
      if (open) body.appendChild(h("tr", { cls: "details", "data-details": r.key }, h("td", { colspan: 8 }, details(r))));
    });
    return h("table", { cls: "timeline" },
      h("thead", null, h("tr", null,
        h("th", { text: "key · agent · model" }), h("th", { text: "status" }), h("th", { text: "try" }),
        h("th", { text: "time" }),
        h("th", { cls: "wide", text: "tokens in/out" }), h("th", { text: "cost" }),
        h("th", { text: "tools" }), h("th", { cls: "wide", text: "when" }))),
      body);
  }

  // A running invocation's time so far (a call in flight has no recorded duration yet).
  function inFlight(r) { return r.status === "running" && r.elapsed_ms !== null && r.elapsed_ms !== undefined; }
  function took(r) { return inFlight(r) ? r.elapsed_ms : r.duration_ms; }

  function details(r) {
    var input = r.input || {};
    var prompt = [];
    if (input.system) prompt.push(h("div", { cls: "muted small", text: "system" }), h("pre", { text: input.system }));
    (input.messages || []).forEach(function (m, i) {
      // a traced turn: its text, or its blocks (tool calls and results); turns alternate
      var role = m && m.role ? m.role : (i % 2 ? "assistant" : "user");
      var body = m && m.content !== undefined ? m.content : m;
      prompt.push(h("div", { cls: "muted small", text: role }), h("pre", { text: typeof body === "string" ? body : json(body) }));
    });
    if (!prompt.length) prompt.push(h("p", { cls: "empty", text: r.status === "waiting" ? "not called yet" : r.status === "running" ? "recorded when the invocation ends" : "not recorded (the run had tracing off)" }));
    var out = [];
    if (r.content !== null && r.content !== undefined) out.push(h("pre", { text: r.content }));
    if (r.output) {
      var rest = {};
      for (var k in r.output) if (k !== "content") rest[k] = r.output[k];
      if (Object.keys(rest).length) out.push(h("div", { cls: "muted small", text: "output fields" }), h("pre", { text: json(rest) }));
    }
    if (r.error) out.push(h("div", { cls: "banner error", text: r.error }));
    if (r.attempts && r.attempts.length > 1) {
      out.push(h("div", { cls: "muted small", text: "attempts" }), h("ul", { cls: "checks" }, r.attempts.map(function (a) {
        return h("li", null, badge(a.status), "#" + a.attempt + " " + fmtMs(a.duration_ms), a.error ? h("span", { cls: "muted", text: a.error }) : null);
      })));
    }
    if ((r.status === "running" || r.status === "pending") && r.turns) out.push(h("p", { cls: "muted", text: r.turns + " turn(s) recorded so far" }));
    if (r.status === "running" && !r.turns) out.push(h("p", { cls: "muted", "data-in-flight": r.key, text: "in flight" + (inFlight(r) ? " for " + fmtMs(r.elapsed_ms) : "") + ": no answer yet" }));
    (r.approvals || []).forEach(function (a) {
      out.push(h("div", { cls: "muted small", "data-approval-of": a.id },
        badge(a.status === "pending" ? "approval" : a.status, "approval " + a.status), " ",
        a.tool ? "tool call " + (a.tool.name || a.tool.call_id) + (a.tool.rerun ? " (made again?)" : "") : "the answer"),
        a.tool ? h("pre", { text: json(a.tool.arguments) }) : null);
    });
    if (!out.length) out.push(h("p", { cls: "empty", text: r.status === "waiting" ? "no answer yet" : "no output" }));
    return h("div", { cls: "grid" },
      h("div", null, h("h3", { text: "Input" }), prompt),
      h("div", null, h("h3", { text: "Output" }), out));
  }

  function toggle(key) {
    if (state.open[key]) delete state.open[key]; else state.open[key] = true;
    render();
  }

  function panel(p) {
    if (p.kind === "debate") return debate(p);
    if (p.kind === "cross_check") return crossCheck(p);
    if (p.kind === "ensemble") return ensemble(p);
    return null;
  }

  function meter(value) {
    var m = h("span", { cls: "meter" }), i = h("i");
    i.style.width = Math.round(100 * (value || 0)) + "%";
    m.appendChild(i);
    return m;
  }

  function debate(p) {
    var body = h("section", { cls: "panel card", "data-panel": "debate", "data-prefix": p.prefix },
      h("h2", { text: "Debate · " + p.title }),
      h("div", { cls: "muted small", text: p.rounds.length + " of at most " + p.max_rounds + " rounds; agreement " + p.convergence_threshold + " ends it" }));
    if (!p.rounds.length) body.appendChild(h("p", { cls: "empty", text: "Nobody has spoken yet." }));
    p.rounds.forEach(function (r) {
      var round = h("div", { cls: "round", "data-round": r.round }, h("h3", { text: "Round " + r.round }));
      r.turns.forEach(function (turn) {
        var side = p.speakers.indexOf(turn.slot);
        round.appendChild(h("div", { cls: "turn", "data-side": String(side % 2), "data-key": turn.key },
          h("div", { cls: "who" }, turn.slot + (turn.agent ? " (" + turn.agent + ")" : "") + " ", turn.status !== "completed" ? badge(turn.status) : null),
          h("div", { cls: "text", text: turn.content || turn.error || "…" })));
      });
      if (r.judgment) {
        round.appendChild(h("div", { cls: "judgment", "data-key": r.mediator && r.mediator.key },
          h("b", { text: "mediator: " }), "agreement ", meter(r.judgment.agreement), " " + r.judgment.agreement.toFixed(2),
          r.judgment.winner ? " · leaning " + r.judgment.winner : "",
          h("div", { cls: "text", text: r.judgment.verdict })));
      } else if (r.mediator) {
        round.appendChild(h("div", { cls: "judgment" }, "mediator ", badge(r.mediator.status)));
      }
      body.appendChild(round);
    });
    if (p.verdict) {
      body.appendChild(h("div", { cls: "verdict" + (p.verdict.reached ? "" : " open"), id: p.prefix ? null : "verdict" },
        h("b", { text: p.verdict.reached ? "Verdict" : "Verdict so far" }),
        " (round " + p.verdict.round + ", agreement " + p.verdict.agreement.toFixed(2) + (p.verdict.winner ? ", winner " + p.verdict.winner : "") + ")",
        h("div", { cls: "text", text: p.verdict.verdict })));
    }
    return body;
  }

  function crossCheck(p) {
    var body = h("section", { cls: "panel card", "data-panel": "cross_check", "data-prefix": p.prefix },
      h("h2", { text: "Cross-check · " + p.title }),
      h("div", { cls: "muted small", text: "consensus: " + p.method }));
    p.rounds.forEach(function (r) {
      var round = h("div", { cls: "round" }, h("h3", { text: r.revision ? "Revision " + r.revision : "Answer" }));
      round.appendChild(h("div", { cls: "turn", "data-side": "0", "data-key": r.answer.key },
        h("div", { cls: "who" }, "primary" + (r.answer.agent ? " (" + r.answer.agent + ")" : "") + " ", r.answer.status !== "completed" ? badge(r.answer.status) : null),
        h("div", { cls: "text", text: r.answer.content || r.answer.error || "…" })));
      round.appendChild(h("ul", { cls: "checks" }, r.validations.map(function (v) {
        if (!("approved" in v)) return h("li", { "data-checker": v.checker }, h("b", { text: v.checker }), badge(v.status, statusLabel(v.status)));
        return h("li", { "data-checker": v.checker },
          h("b", { text: v.checker }), badge(v.approved ? "approved" : "rejected"),
          h("span", { cls: "muted small", text: "confidence " + Number(v.confidence).toFixed(2) }),
          v.issues && v.issues.length ? h("span", { cls: "small", text: v.issues.join("; ") }) : null);
      })));
      if (r.consensus) {
        round.appendChild(h("div", { cls: "judgment" }, h("b", { text: "consensus: " }),
          badge(r.consensus.approved ? "approved" : "rejected"),
          " " + r.consensus.approvals + " for, " + r.consensus.rejections + " against (score " + r.consensus.score + ")"));
      }
      body.appendChild(round);
    });
    if (p.consensus) {
      body.appendChild(h("div", { cls: "verdict" + (p.approved ? "" : " open") },
        h("b", { text: p.approved ? "Approved" : "Not approved" }), " by " + p.method + " consensus"));
    }
    return body;
  }

  function ensemble(p) {
    var body = h("section", { cls: "panel card", "data-panel": "ensemble", "data-prefix": p.prefix },
      h("h2", { text: "Ensemble · " + p.title }),
      h("div", { cls: "muted small", text: "aggregation: " + p.aggregate.method }));
    body.appendChild(h("div", { cls: "side-by-side" }, p.members.map(function (m) {
      return h("div", { cls: "answer", "data-status": m.status, "data-key": m.key },
        h("div", { cls: "who" }, h("b", { text: m.slot }), " ", badge(m.status, statusLabel(m.status))),
        h("div", { cls: "muted small", text: m.agent || "" }),
        h("div", { cls: "text", text: m.content || m.error || (m.nested ? "(a nested topology: see its panel)" : "…") }));
    })));
    var agg = p.aggregate;
    if (agg.content || agg.aggregator) {
      body.appendChild(h("div", { cls: "verdict" },
        h("b", { text: "Aggregate" }), agg.winner ? " · winner " + agg.winner : "",
        h("div", { cls: "text", text: agg.content || (agg.aggregator && agg.aggregator.content) || "…" })));
    }
    return body;
  }

  function approvals(list) {
    var body = h("section", { cls: "panel card approval", id: "approvals" }, h("h2", { text: "Approvals" }));
    list.forEach(function (a) {
      body.appendChild(h("div", { cls: "round", "data-approval": a.id },
        h("div", null, badge(a.status === "pending" ? "approval" : a.status, a.status), " ", h("span", { cls: "question", text: a.question })),
        h("div", { cls: "muted small", text: "#" + a.id + " · " + a.agent_name + " · " + (a.invocation_key || a.key) }),
        a.tool ? h("div", { cls: "small", "data-tool": a.tool.name || "" }, "tool call ", h("b", { text: a.tool.name || a.tool.call_id }), a.tool.rerun ? " (in flight when the run stopped: make it again?)" : "") : null,
        h("pre", { text: a.edited || a.proposed }),
        a.status === "pending" ? h("div", { cls: "muted small" }, "answer with ", h("code", { text: "qmcp approvals answer " + a.id + " --approve" }), " (or --reject), or the approvals_answer tool, then resume the execution") : null,
        a.comment ? h("div", { cls: "small", text: "comment: " + a.comment }) : null));
    });
    return body;
  }

  function renderList(rows) {
    var root = document.getElementById("app");
    root.textContent = "";
    root.appendChild(h("header", null, h("div", { cls: "title" }, h("h1", { text: "Executions" }),
      h("span", { cls: "muted", text: "newest first; open one to follow it live" }))));
    if (!rows.length) { root.appendChild(h("p", { cls: "empty", text: "No executions yet." })); return done(); }
    var body = h("tbody");
    rows.forEach(function (r) {
      body.appendChild(h("tr", { "data-execution": r.id },
        h("td", { cls: "mono" }, h("a", { href: (boot.base || "") + "/executions/" + encodeURIComponent(r.id), text: r.id.slice(0, 8) })),
        h("td", { text: r.topology_name }), h("td", null, badge(r.status)),
        h("td", { cls: "num", text: r.invocation_count }), h("td", { text: fmtCost(r.cost_usd) }),
        h("td", { cls: "muted small", text: r.created_at || "" })));
    });
    root.appendChild(h("section", null, h("table", { cls: "list" },
      h("thead", null, h("tr", null, ["id", "topology", "status", "invocations", "cost", "created"].map(function (c) { return h("th", { text: c }); }))),
      body)));
    return done();
  }

  // -- data: the HTTP page fetches JSON; the MCP App asks its host ---------------------------

  function show(view) {
    var raw = JSON.stringify(view);
    var changed = raw !== state.raw;
    state.view = view; state.raw = raw;
    if (changed || !document.body.hasAttribute("data-ready")) render();
  }

  // One poll loop at a time: a loop started later (or a stop) ends the one before it.
  var generation = 0;
  function schedule(load) {
    stopPolling();
    var mine = generation;
    state.timer = setTimeout(function tick() {
      load().then(function (keepGoing) {
        if (mine !== generation) return;
        state.timer = keepGoing ? setTimeout(tick, POLL_MS) : null;
        if (!keepGoing && state.view) render();
      }, function () {
        if (mine === generation) state.timer = setTimeout(tick, POLL_MS * 2);
      });
    }, 0);
  }
  function stopPolling() {
    generation += 1;
    if (state.timer !== null) clearTimeout(state.timer);
    state.timer = null;
  }
  var reload = null;
  function refreshNow() { if (reload) schedule(reload); }

  function httpMode() {
    var api = boot.api;
    if (boot.page === "list") {
      reload = function () {
        return fetch(api, { credentials: "same-origin", headers: { Accept: "application/json" } })
          .then(function (r) { if (!r.ok) throw new Error("HTTP " + r.status); return r.json(); })
          .then(function (rows) { renderList(rows); return true; });
      };
      POLL_MS = Math.max(POLL_MS, 3000);
      schedule(reload);
      return;
    }
    reload = function () {
      return fetch(api, { credentials: "same-origin", headers: { Accept: "application/json" } })
        .then(function (r) {
          if (r.status === 401) { state.note = "signed out: reload the page to sign in again"; render(); return null; }
          if (!r.ok) return r.json().then(function (e) { throw new Error(e.detail || ("HTTP " + r.status)); });
          return r.json();
        })
        .then(function (view) { if (!view) return false; state.note = null; show(view); return view.live; },
          function (err) { state.note = "could not read the execution: " + err.message; render(); throw err; });
    };
    schedule(reload);
  }

  // The MCP Apps bridge: JSON-RPC 2.0 over postMessage with the host (SEP-1865).
  function appMode() {
    var host = window.parent;
    var nextId = 1, pending = {}, hostCaps = {};
    function send(msg) { host.postMessage(msg, "*"); }
    function request(method, params) {
      var id = nextId++;
      return new Promise(function (resolve, reject) {
        pending[id] = { resolve: resolve, reject: reject };
        send({ jsonrpc: "2.0", id: id, method: method, params: params || {} });
      });
    }
    function notify(method, params) { send({ jsonrpc: "2.0", method: method, params: params || {} }); }
    window.addEventListener("message", function (event) {
      if (event.source !== host) return;
      var msg = event.data;
      if (!msg || msg.jsonrpc !== "2.0") return;
      if (msg.id !== undefined && msg.method === undefined) {
        var waiter = pending[msg.id];
        if (!waiter) return;
        delete pending[msg.id];
        if (msg.error) waiter.reject(new Error(msg.error.message || "the host refused"));
        else waiter.resolve(msg.result);
        return;
      }
      if (msg.id !== undefined) {           // a request from the host
        if (msg.method === "ui/resource-teardown") stopPolling();
        send({ jsonrpc: "2.0", id: msg.id, result: {} });
        return;
      }
      onNotification(msg.method, msg.params || {});
    });

    function onNotification(method, params) {
      if (method === "ui/notifications/tool-input") {
        var args = params.arguments || {};
        if (args.execution_id) follow(String(args.execution_id));
        else if (args.topology && !state.executionId) {
          state.followTopology = String(args.topology);
          state.note = "Starting " + args.topology + "…";
          render();
          schedule(discover);
        }
      } else if (method === "ui/notifications/tool-result") {
        var sc = params.structuredContent || {};
        var id = sc.execution_id || sc.id;
        if (params.isError) {
          var text = (params.content || []).map(function (c) { return c.text || ""; }).join(" ");
          state.note = "The tool call failed: " + text;
          if (!state.view) { stopPolling(); render(); }
          return;
        }
        if (id) follow(String(id));
      } else if (method === "ui/notifications/tool-cancelled") {
        state.note = "The tool call was cancelled" + (params.reason ? ": " + params.reason : "") + ".";
        render();
      } else if (method === "ui/notifications/host-context-changed") {
        applyContext(params);
        drawEdges();
      }
    }

    // While topologies_run (wait=true) has not answered, its execution id is unknown: follow the
    // newest running execution of that topology until the result names the run.
    function discover() {
      if (state.executionId) return Promise.resolve(false);
      return request("tools/call", { name: "executions_list", arguments: { topology: state.followTopology, status: "running", limit: 1 } })
        .then(function (result) {
          var rows = ((result && result.structuredContent) || {}).executions || [];
          if (rows.length && !state.executionId) { follow(rows[0].id, true); return false; }
          return true;
        });
    }

    function follow(id, guessed) {
      if (state.executionId === id && state.view) return;
      state.executionId = id;
      state.note = guessed ? "Following the newest running execution of " + state.followTopology + "." : null;
      schedule(load);
    }

    function load() {
      var id = state.executionId;
      var read = hostCaps.serverResources
        ? request("resources/read", { uri: "qmcp://executions/" + id + "/view" }).then(function (r) {
            return JSON.parse(r.contents[0].text);
          })
        : Promise.reject(new Error("no resources"));
      return read.catch(function () {
        // A host that proxies tools but not resources: the timeline from executions_get.
        return request("tools/call", { name: "executions_get", arguments: { execution_id: id } }).then(function (r) {
          if (r.isError) throw new Error(((r.content || [])[0] || {}).text || "executions_get failed");
          return fromExecution(r.structuredContent);
        });
      }).then(function (view) {
        if (state.executionId !== id) return false;
        show(view);
        return view.live;
      }, function (err) { state.note = "could not read the execution: " + err.message; render(); throw err; });
    }
    reload = function () { return state.executionId ? load() : discover(); };

    function applyContext(ctx) {
      if (!ctx) return;
      if (ctx.theme) document.documentElement.setAttribute("data-theme", ctx.theme);
      var vars = ctx.styles && ctx.styles.variables;
      if (vars) for (var name in vars) if (vars[name] && /^--[a-z0-9-]+$/.test(name)) document.documentElement.style.setProperty(name, vars[name]);
    }

    var lastSize = "";
    function reportSize() {
      var el = document.documentElement;
      var size = { width: Math.ceil(el.scrollWidth), height: Math.ceil(el.scrollHeight) };
      var key = size.width + "x" + size.height;
      if (key !== lastSize) { lastSize = key; notify("ui/notifications/size-changed", size); }
    }

    render();
    request("ui/initialize", {
      protocolVersion: PROTOCOL,
      appInfo: { name: "qmcp run view", version: boot.version || "0" },
      appCapabilities: { availableDisplayModes: ["inline", "fullscreen"] },
    }).then(function (result) {
      hostCaps = (result && result.hostCapabilities) || {};
      applyContext(result && result.hostContext);
      notify("ui/notifications/initialized", {});
      if (window.ResizeObserver) new ResizeObserver(reportSize).observe(document.body);
      reportSize();
    }, function (err) {
      state.note = "the host did not answer ui/initialize: " + err.message;
      render();
    });
  }

  // A view built from executions_get alone (a host without resources/read): the timeline.
  function fromExecution(info) {
    var rows = (info.invocations || []).map(function (r) {
      return {
        key: r.key, slot: r.slot, agent: r.agent_name, model: r.model, status: r.status,
        attempt: r.attempt, attempts: [], offset_ms: null, duration_ms: r.duration_ms,
        input_tokens: r.input_tokens, output_tokens: r.output_tokens, cost_usd: r.cost_usd,
        tool_calls: r.output && typeof r.output.tool_calls === "number" ? r.output.tool_calls : null,
        error: r.error, content: r.output ? r.output.content : null, output: r.output, input: r.input || {}, approval: null,
      };
    });
    var live = ["completed", "failed", "cancelled"].indexOf(info.status) < 0;
    return {
      version: 1, live: live, approvals: [], panels: [],
      execution: {
        id: info.id, topology_name: info.topology_name, topology_type: "", runner_type: info.runner_type,
        status: info.status, duration_ms: info.duration_ms, error: info.error,
        content: info.output ? info.output.content : null,
      },
      totals: {
        done: rows.filter(function (r) { return r.status === "completed"; }).length,
        planned: rows.length, failed: rows.filter(function (r) { return r.status === "failed"; }).length,
        input_tokens: info.input_tokens, output_tokens: info.output_tokens, cost_usd: info.cost_usd, tool_calls: 0,
      },
      topology: { name: info.topology_name, type: "", slots: [], layers: [], edges: [] },
      invocations: rows,
    };
  }

  window.addEventListener("resize", function () { drawEdges(); });
  if (boot.mode === "http") httpMode(); else appMode();
})();
