/** The ops console's page, script and style: public files with no data in them (the data needs a token). */
import { CONSOLE_CSS, CONSOLE_HTML, CONSOLE_JS } from '../console/page.ts';
import type { RouteSpec } from '../route.ts';

export function consoleRoutes(): RouteSpec[] {
  const file = (url: string, op: string, type: string, body: string, summary: string): RouteSpec => ({
    method: 'GET',
    url,
    op,
    kind: 'public',
    tag: 'console',
    summary,
    produces: type,
    handler: async (_req, reply) => {
      reply.type(type);
      return body;
    },
  });
  return [
    file('/console/', 'console.page', 'text/html; charset=utf-8', CONSOLE_HTML, 'The ops console (logs in with an admin token).'),
    file('/console/app.js', 'console.script', 'text/javascript; charset=utf-8', CONSOLE_JS, "The console's script."),
    file('/console/style.css', 'console.style', 'text/css; charset=utf-8', CONSOLE_CSS, "The console's style."),
    {
      method: 'GET',
      url: '/',
      op: 'console.redirect',
      kind: 'public',
      tag: 'console',
      summary: 'Redirects to the console.',
      handler: async (_req, reply) => reply.redirect('/console/', 302),
    },
  ];
}
