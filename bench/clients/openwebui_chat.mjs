// Drives Open WebUI's own page in headless Chromium, as a user would: a new
// chat, one message per argument, each answer awaited until its copy button
// shows. An argument "@FILE" attaches FILE (through the page's file input,
// so Open WebUI extracts, chunks and embeds it) to the next message.
// With MODEL_PARAMS set (JSON, e.g. {"max_tokens": 160, "seed": 5}), the
// model's Advanced Params are set first, as Workspace > Models does (through
// the same admin API).
// Prints a JSON summary: the answers' text and any page errors.
// Usage: node openwebui_chat.mjs URL SCREENSHOT.png "message" ["@file" "message" ...]
import { chromium } from 'playwright-core';

const [url, shot, ...messages] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
const result = { answers: [], errors: [] };
page.on('pageerror', (e) => result.errors.push(String(e)));
try {
  // The page keeps a socket open, so "network idle" never comes: wait for the input.
  await page.goto(url, { waitUntil: 'domcontentloaded', timeout: 120000 });
  const input = page.locator('#chat-input');
  await input.waitFor({ timeout: 120000 });
  if (process.env.MODEL_PARAMS) {
    const model = process.env.MODEL || 'smollm2';
    result.model_params = await page.evaluate(async ([model, params]) => {
      const r = await fetch('/api/v1/models/create', {
        method: 'POST',
        headers: { 'Content-Type': 'application/json', Authorization: `Bearer ${localStorage.token}` },
        body: JSON.stringify({ id: model, base_model_id: null, name: model, meta: {},
          params }),
      });
      return `${r.status} ${await r.text()}`.slice(0, 200);
    }, [model, JSON.parse(process.env.MODEL_PARAMS)]);
    await page.reload({ waitUntil: 'domcontentloaded' });
    await input.waitFor({ timeout: 120000 });
  }
  // First visit: the release notes cover the page.
  await page.waitForTimeout(2000);
  const notes = page.getByRole('button', { name: "Okay, Let's Go!" });
  if (await notes.count()) await notes.first().click();
  let i = 0;
  for (const message of messages) {
    if (message.startsWith('@')) {
      // The input bar's "+" menu, "Upload Files", the browser's file chooser.
      await page.locator('#input-menu-button').click();
      const [chooser] = await Promise.all([
        page.waitForEvent('filechooser', { timeout: 30000 }),
        page.getByText('Upload Files', { exact: true }).first().click(),
      ]);
      await chooser.setFiles(message.slice(1));
      // Uploaded, extracted and embedded: the attachment stops showing a spinner.
      await page.waitForTimeout(2000);
      await page.waitForFunction(() => !document.querySelector('.animate-spin'),
        null, { timeout: 300000 });
      continue;
    }
    await input.waitFor({ timeout: 60000 });
    await input.click();
    await page.keyboard.type(message);
    await page.keyboard.press('Enter');
    // An answer is done when its action buttons (copy, regenerate) appear.
    const answer = page.locator('.chat-assistant').nth(i);
    await answer.waitFor({ timeout: 180000 });
    await page.waitForFunction(
      (n) => document.querySelectorAll('button.copy-response-button').length > n,
      i, { timeout: 900000 });
    await page.waitForTimeout(1000);
    result.answers.push((await answer.innerText()).trim());
    i += 1;
  }
} catch (e) {
  result.errors.push(String(e));
} finally {
  await page.screenshot({ path: shot, fullPage: true });
  await browser.close();
}
console.log(JSON.stringify(result));
