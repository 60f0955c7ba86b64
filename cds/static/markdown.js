// The Markdown that cards use (CommonMark subset: paragraphs, headings, lists, **bold**, *italic* or
// _italic_, `code`, [links](https://...)), rendered by building DOM nodes: text is never parsed as HTML,
// so a card cannot inject markup or script. Links open only http(s) URLs.
"use strict";

(function () {
  const INLINE = [
    { kind: "code", re: /`([^`]+)`/ },
    { kind: "link", re: /\[([^\]]+)\]\((https?:\/\/[^\s)]+)\)/ },
    { kind: "strong", re: /\*\*(.+?)\*\*/ },
    { kind: "em", re: /(?<![\w*])\*(?![*\s])(.+?)(?<![\s*])\*(?![\w*])/ },
    { kind: "em", re: /(?<!\w)_(?!\s)(.+?)(?<!\s)_(?!\w)/ },
  ];

  function inline(text, parent) {
    while (text) {
      let best = null;
      for (const rule of INLINE) {
        const match = rule.re.exec(text);
        if (match && (best === null || match.index < best.match.index)) best = { rule, match };
      }
      if (best === null) {
        parent.appendChild(document.createTextNode(text));
        return;
      }
      const { rule, match } = best;
      if (match.index > 0) parent.appendChild(document.createTextNode(text.slice(0, match.index)));
      let node;
      if (rule.kind === "code") {
        node = document.createElement("code");
        node.textContent = match[1];
      } else if (rule.kind === "link") {
        node = document.createElement("a");
        node.href = match[2];
        node.target = "_blank";
        node.rel = "noopener noreferrer";
        inline(match[1], node);
      } else {
        node = document.createElement(rule.kind);
        inline(match[1], node);
      }
      parent.appendChild(node);
      text = text.slice(match.index + match[0].length);
    }
  }

  function renderMarkdown(source) {
    const root = document.createElement("div");
    let paragraph = null;
    let list = null;
    let item = null;
    const close = () => {
      if (paragraph !== null) inline(paragraph.join(" "), root.appendChild(document.createElement("p")));
      paragraph = null;
      list = null;
      item = null;
    };
    const flushItem = () => {
      if (item !== null) inline(item.text.join(" "), item.node);
      item = null;
    };
    for (const line of String(source).split(/\r?\n/)) {
      const heading = /^(#{1,6})\s+(.*)$/.exec(line);
      const bullet = /^\s*[-*+]\s+(.*)$/.exec(line);
      const numbered = /^\s*\d+[.)]\s+(.*)$/.exec(line);
      if (!line.trim()) {
        flushItem();
        close();
      } else if (heading) {
        flushItem();
        close();
        inline(heading[2], root.appendChild(document.createElement("h" + Math.min(heading[1].length + 2, 6))));
      } else if (bullet || numbered) {
        const tag = bullet ? "ul" : "ol";
        flushItem();
        if (paragraph !== null) close();
        if (list === null || list.tagName.toLowerCase() !== tag) list = root.appendChild(document.createElement(tag));
        item = { node: list.appendChild(document.createElement("li")), text: [(bullet || numbered)[1]] };
      } else if (item !== null) {
        item.text.push(line.trim()); // a wrapped list item
      } else {
        list = null;
        paragraph = paragraph || [];
        paragraph.push(line.trim());
      }
    }
    flushItem();
    close();
    return root;
  }

  window.renderMarkdown = renderMarkdown;
})();
