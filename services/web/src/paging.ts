/** Reading every page of a paged list. */

/** Every item of a paged list, up to about `max` (the dashboard shows the first 500). */
export async function allPages<T>(page: (pageToken: string) => Promise<{ items: T[]; next: string }>, max = 500): Promise<T[]> {
  const items: T[] = [];
  let pageToken = "";
  do {
    const answer = await page(pageToken);
    items.push(...answer.items);
    pageToken = answer.next;
  } while (pageToken && items.length < max);
  return items;
}
